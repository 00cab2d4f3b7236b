import Foundation
import NIOCore
@testable import SkeinCluster
@testable import SkeinNode
import Testing

/// The peer port in process: the HTTP/2 connection actor against a real node's peer server,
/// the proof of the secret (wrong, missing, replayed) and the answers to bad messages.
@Suite struct PeerTransportTests {
    static func node(secret: String) async throws -> (TestNode, Int) {
        let node = try await TestNode.start { settings in settings.clusterSecret = secret }
        let port = try #require(await node.peerPort())
        return (node, port)
    }

    static func envelope() -> Envelope {
        let me = Member(id: MemberID(name: "probe", generation: 1), peer: "127.0.0.1:1", client: "127.0.0.1:2", state: .alive, incarnation: 0)
        return Envelope(from: me, message: .ping(seq: 7, target: MemberID(name: "n1", generation: 0), updates: []))
    }

    @Test func aProvenPingIsAckedOnTheSameStream() async throws {
        let (node, port) = try await Self.node(secret: "s3cret")
        defer { Task { await node.stop() } }
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "s3cret"), traffic: PeerTraffic(), logger: .init(label: "t"))
        let answer = try await connection.post(path: PeerResponder.membershipPath, body: MembershipCodec.encode([Self.envelope()]))
        #expect(answer.status == 200)
        let replies = try MembershipCodec.decode(answer.body)
        #expect(replies.contains { if case .ack(7, _) = $0.message { true } else { false } })
        // Many calls share the one connection, concurrently.
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<20 {
                group.addTask { try await connection.post(path: PeerResponder.membershipPath, body: MembershipCodec.encode([Self.envelope()])).status }
            }
            for try await status in group { #expect(status == 200) }
        }
        await connection.close()
    }

    @Test func aWrongSecretIsRefusedWith401() async throws {
        let (node, port) = try await Self.node(secret: "right")
        defer { Task { await node.stop() } }
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "wrong"), traffic: PeerTraffic(), logger: .init(label: "t"))
        let answer = try await connection.post(path: PeerResponder.membershipPath, body: MembershipCodec.encode([Self.envelope()]))
        #expect(answer.status == 401)
        #expect(try await node.clusterMembers() == ["n1"], "a refused request changes nothing")
        await connection.close()
    }

    @Test func badMessagesAre400AndTheNodeLives() async throws {
        let (node, port) = try await Self.node(secret: "s")
        defer { Task { await node.stop() } }
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "s"), traffic: PeerTraffic(), logger: .init(label: "t"))
        var future = MembershipCodec.encode([Self.envelope()])
        future[0] = 99
        let unknownVersion = try await connection.post(path: PeerResponder.membershipPath, body: future)
        #expect(unknownVersion.status == 400)
        #expect(String(decoding: unknownVersion.body, as: UTF8.self).contains("version 99"))
        let garbage = try await connection.post(path: PeerResponder.membershipPath, body: [1, 1, 0xFF, 0xFF])
        #expect(garbage.status == 400)
        let tooBig = try await connection.post(path: PeerResponder.membershipPath, body: [UInt8](repeating: 1, count: PeerLimits.maxBody + 1))
        #expect(tooBig.status == 413)
        let health = try await node.request("GET", "/healthz")
        #expect(health.status == 200)
        await connection.close()
    }

    @Test func aReplayedProofIsRefused() {
        let auth = PeerAuth(secret: "k")
        let body: [UInt8] = [1, 2, 3]
        let header = auth.sign(method: "POST", path: "/p", body: body)
        #expect(auth.verify(header: header, method: "POST", path: "/p", body: body) == nil)
        #expect(auth.verify(header: header, method: "POST", path: "/p", body: body) == "replayed request")
        let other = auth.sign(method: "POST", path: "/p", body: body)
        #expect(auth.verify(header: other, method: "POST", path: "/p", body: [9]) == "wrong proof of the cluster secret")
        #expect(auth.verify(header: other, method: "POST", path: "/q", body: body) == "wrong proof of the cluster secret")
        let old = auth.sign(method: "POST", path: "/p", body: body, now: Date().addingTimeInterval(-120))
        #expect(auth.verify(header: old, method: "POST", path: "/p", body: body)?.contains("away from this node's clock") == true)
        #expect(auth.verify(header: nil, method: "POST", path: "/p", body: body) != nil)
    }

    @Test func aConnectionToNobodyFailsCleanlyAndBacksOff() async throws {
        let port = ClusterProcessTests.freePorts(1)[0]
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "k"), traffic: PeerTraffic(), logger: .init(label: "t"))
        await #expect(throws: PeerCallError.self) { try await connection.post(path: "/x", body: []) }
        let second = await #expect(throws: PeerCallError.self) { try await connection.post(path: "/x", body: []) }
        #expect(second?.description.contains("retrying in") == true)
    }

    @Test func aCallInFlightFailsCleanlyWhenThePeerGoes() async throws {
        // A "peer" that accepts the connection, reads, and hangs up without answering.
        let port = ClusterProcessTests.freePorts(1)[0]
        let ready = temporaryDirectory() + "/ready"
        let script = """
            import socket, time
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(port))); s.listen(1); s.settimeout(20)
            open("\(ready)", "w").write("ok")
            c, _ = s.accept(); c.recv(65536); time.sleep(0.3); c.close(); s.close()
            """
        // Not awaited: the script ends by itself once it has hung up (or after 20 s).
        _ = Task { try await run("python3", ["-c", script]) }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: ready) {
            try await Task.sleep(for: .milliseconds(25))
        }
        #expect(FileManager.default.fileExists(atPath: ready), "the hanging-up peer never listened")
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "k"), traffic: PeerTraffic(),
                                            logger: .init(label: "t"), callTimeout: .seconds(30))
        let clock = ContinuousClock()
        let started = clock.now
        await #expect(throws: (any Error).self) { try await connection.post(path: "/v1/peer/membership", body: [1, 0]) }
        #expect(clock.now - started < .seconds(5), "the call ended with the connection, not with its timeout")
        await connection.close()
    }
}
