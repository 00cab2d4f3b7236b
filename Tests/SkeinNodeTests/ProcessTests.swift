import Foundation
import Testing

/// The `skein` binary as a person runs it: clear one-line failures, help, and SIGTERM.
@Suite struct ProcessTests {
    static var binary: String {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = executable.deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("skein").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/skein").standardized.path
    }

    @Test func helpDocumentsEverySetting() async throws {
        let help = try await run(Self.binary, ["node", "--help"])
        #expect(help.status == 0)
        for flag in ["--name", "--listen", "--peer", "--seeds", "--data", "--cluster-secret", "--max-body-size",
                     "--slow-request-ms", "--trace-buffer", "--log-level", "--compute-threads", "--config"] {
            #expect(help.output.contains(flag), "\(flag) missing from --help")
        }
        #expect(help.output.contains("SKEIN_MAX_BODY_SIZE"))
    }

    @Test func aPortInUseIsOneClearLine() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        let result = try await run(Self.binary, ["node", "--listen", "127.0.0.1:\(node.port)", "--peer", "127.0.0.1:0", "--data", temporaryDirectory()])
        #expect(result.status != 0)
        let lines = result.output.split(separator: "\n")
        #expect(lines.last == "skein: port 127.0.0.1:\(node.port) is in use (--listen)", "\(result.output)")
    }

    @Test func anUnusableDataDirectoryIsOneClearLine() async throws {
        let file = temporaryDirectory() + "/not-a-dir"
        FileManager.default.createFile(atPath: file, contents: Data())
        let result = try await run(Self.binary, ["node", "--listen", "127.0.0.1:0", "--peer", "127.0.0.1:0", "--data", file])
        #expect(result.status != 0)
        #expect(result.output == "skein: data directory \(file) is unusable: it is a file, not a directory\n")
    }

    @Test func badFlagsAreOneClearLine() async throws {
        let result = try await run(Self.binary, ["node", "--listen", "nowhere"])
        #expect(result.status != 0)
        #expect(result.output.hasPrefix("skein: --listen (SKEIN_LISTEN"), "\(result.output)")
        let env = try await run(Self.binary, ["node", "--peer", "127.0.0.1:0"], environment: ["SKEIN_MAX_BODY_SIZE": "lots", "PATH": ProcessInfo.processInfo.environment["PATH"] ?? ""])
        #expect(env.status != 0)
        #expect(env.output.contains("--max-body-size (SKEIN_MAX_BODY_SIZE"))
    }

    @Test func sigtermStopsGracefully() async throws {
        let data = temporaryDirectory()
        let log = data + "/node.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["node", "--listen", "127.0.0.1:0", "--peer", "127.0.0.1:0", "--data", data + "/d"]
        process.standardOutput = handle
        process.standardError = handle
        let (exited, sink) = AsyncStream.makeStream(of: Int32.self)
        process.terminationHandler = { sink.yield($0.terminationStatus) }
        try process.run()

        var port: Int?
        for _ in 0..<300 where port == nil {
            try await Task.sleep(for: .milliseconds(20))
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let range = text.range(of: #"client=127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                port = Int(text[range].split(separator: ":").last!)
            }
        }
        let servingPort = try #require(port, "node never logged its port")
        let health = try await run("curl", ["-s", "http://127.0.0.1:\(servingPort)/healthz"])
        #expect(health.output == "ok\n")

        // A connection that never says a word must not hold up the shutdown.
        let silent = Process()
        silent.executableURL = URL(fileURLWithPath: "/bin/bash")
        silent.arguments = ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(servingPort); sleep 20"]
        try silent.run()
        defer { silent.terminate() }
        try await Task.sleep(for: .milliseconds(200))

        kill(process.processIdentifier, SIGTERM)
        let status = await withTaskGroup(of: Int32?.self) { group in
            group.addTask {
                var iterator = exited.makeAsyncIterator()
                return await iterator.next()
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(10))
                return nil
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
        if status == nil { process.terminate() }
        #expect(status == 0, "the node did not stop within 10 s of SIGTERM")
        let text = try String(contentsOfFile: log, encoding: .utf8)
        #expect(text.contains("stopped"), "\(text)")
    }
}
