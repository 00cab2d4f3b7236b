import Foundation
import SkeinNode
import Testing

@Suite struct SettingsTests {
    @Test func defaultsMatchTheContract() async throws {
        let s = try await NodeSettings.load(flags: [:], configFile: nil, environment: [:])
        #expect(s.listen.description == "127.0.0.1:8080")
        #expect(s.peer.description == "127.0.0.1:7946")
        #expect(s.data == "./skein-data")
        #expect(s.maxBodySize == 1 << 20)
        #expect(s.logCompactEntries == 20_000)
        #expect(s.logCompactBytes == 64 << 20)
    }

    @Test func flagsBeatEnvironmentWhichBeatsTheFile() async throws {
        let file = temporaryDirectory() + "/skein.json"
        try Data(#"{"listen":"127.0.0.1:9000","maxBodySize":100,"name":"from-file","seeds":"127.0.0.1:9081,127.0.0.1:9082"}"#.utf8)
            .write(to: URL(fileURLWithPath: file))
        let env = ["SKEIN_MAX_BODY_SIZE": "200", "SKEIN_NAME": "from-env", "SKEIN_SLOW_REQUEST_MS": "12.5"]
        let s = try await NodeSettings.load(flags: ["name": "from-flag"], configFile: file, environment: env)
        #expect(s.name == "from-flag")
        #expect(s.maxBodySize == 200)
        #expect(s.listen.port == 9000)
        #expect(s.slowRequestMs == 12.5)
        #expect(s.seeds.map(\.description) == ["127.0.0.1:9081", "127.0.0.1:9082"])
    }

    @Test func badValuesNameTheSetting() async throws {
        let cases: [([String: String], String)] = [
            (["listen": "nowhere"], "--listen"),
            (["maxBodySize": "-3"], "--max-body-size"),
            (["logLevel": "loud"], "--log-level"),
            (["seeds": "127.0.0.1:1,bad"], "--seeds"),
            (["name": "has space"], "--name"),
            (["otlpEndpoint": "localhost:4318"], "--otlp-endpoint"),
            (["otlpProtocol": "grpc"], "--otlp-protocol"),
            (["eventLoops": "0"], "--event-loops"),
            (["eventLoops": "257"], "--event-loops"),
            (["eventLoops": "two"], "--event-loops"),
            (["logCompactEntries": "3"], "--log-compact-entries"),
            (["logCompactBytes": "1k"], "--log-compact-bytes"),
        ]
        for (flags, named) in cases {
            await #expect {
                try await NodeSettings.load(flags: flags, configFile: nil, environment: [:])
            } throws: { error in
                "\(error)".contains(named) && "\(error)".contains(NodeSettings.environmentName((error as! SettingsError).setting))
            }
        }
        await #expect(throws: SettingsError.self) {
            try await NodeSettings.load(flags: [:], configFile: "/nonexistent/skein.json", environment: [:])
        }
    }

    @Test func otlpExportIsOffUntilAnEndpointIsGiven() async throws {
        let off = try await NodeSettings.load(flags: [:], configFile: nil, environment: [:])
        #expect(off.otlpEndpoint == nil)
        #expect(off.otlpProtocol == .protobuf)
        let on = try await NodeSettings.load(flags: [:], configFile: nil, environment: [
            "SKEIN_OTLP_ENDPOINT": "http://collector:4318/", "SKEIN_OTLP_PROTOCOL": "http/json"])
        #expect(on.otlpEndpoint == "http://collector:4318")
        #expect(on.otlpProtocol == .json)
    }

    @Test func eventLoopsAreSharedUntilACountIsGiven() async throws {
        #expect(try await NodeSettings.load(flags: [:], configFile: nil, environment: [:]).eventLoops == nil)
        #expect(try await NodeSettings.load(flags: [:], configFile: nil, environment: ["SKEIN_EVENT_LOOPS": "1"]).eventLoops == 1)
        #expect(try await NodeSettings.load(flags: ["eventLoops": "3"], configFile: nil, environment: ["SKEIN_EVENT_LOOPS": "1"]).eventLoops == 3)
    }

    @Test func namesAreDerivedOneWay() {
        #expect(NodeSettings.flagName("maxBodySize") == "max-body-size")
        #expect(NodeSettings.environmentName("maxBodySize") == "SKEIN_MAX_BODY_SIZE")
        #expect(NodeSettings.environmentName("clusterSecret") == "SKEIN_CLUSTER_SECRET")
    }
}
