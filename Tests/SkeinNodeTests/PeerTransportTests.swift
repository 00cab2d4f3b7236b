import Foundation
import NIOCore
import NIOHTTP1
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

    /// What these tests check is the answer, not its speed: at the suite's start, with every
    /// suite starting nodes at once on 2 cores, an answer has taken over the 2 s default.
    static let patient = TimeAmount.seconds(15)

    static func envelope() -> Envelope {
        let me = Member(id: MemberID(name: "probe", generation: 1), peer: "127.0.0.1:1", client: "127.0.0.1:2", state: .alive, incarnation: 0)
        return Envelope(from: me, message: .ping(seq: 7, target: MemberID(name: "n1", generation: 0), updates: []))
    }

    @Test func aProvenPingIsAckedOnTheSameStream() async throws {
        let (node, port) = try await Self.node(secret: "s3cret")
        defer { Task { await node.stop() } }
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "s3cret"), traffic: PeerTraffic(), logger: .init(label: "t"), callTimeout: Self.patient)
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
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "wrong"), traffic: PeerTraffic(), logger: .init(label: "t"), callTimeout: Self.patient)
        let answer = try await connection.post(path: PeerResponder.membershipPath, body: MembershipCodec.encode([Self.envelope()]))
        #expect(answer.status == 401)
        #expect(try await node.clusterMembers() == ["n1"], "a refused request changes nothing")
        await connection.close()
    }

    @Test func badMessagesAre400AndTheNodeLives() async throws {
        let (node, port) = try await Self.node(secret: "s")
        defer { Task { await node.stop() } }
        let connection = try PeerConnection(address: "127.0.0.1:\(port)", auth: PeerAuth(secret: "s"), traffic: PeerTraffic(), logger: .init(label: "t"), callTimeout: Self.patient)
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

/// The long-lived Raft stream: its framing, and a real node reading it.
@Suite struct RaftStreamTests {
    @Test func framesRoundTripWhateverTheChunksAndRefuseTampering() throws {
        let auth = PeerAuth(secret: "s")
        var stream = PeerStreamFrame.encode([1, 2, 3], sequence: 0, stream: "abc", auth: auth)
        var second = PeerStreamFrame.encode([4, 5], sequence: 1, stream: "abc", auth: auth)
        stream.writeBuffer(&second)
        let whole = Array(stream.readableBytesView)
        // Fed a byte at a time, each frame comes out once it is whole, in order.
        var buffer = ByteBuffer()
        var payloads: [[UInt8]] = []
        for byte in whole {
            buffer.writeInteger(byte)
            while let payload = try PeerStreamFrame.next(from: &buffer, sequence: UInt64(payloads.count), stream: "abc", auth: auth, limit: 100) {
                payloads.append(payload)
            }
        }
        #expect(payloads == [[1, 2, 3], [4, 5]])
        #expect(buffer.readableBytes == 0)

        func refusal(_ bytes: [UInt8], sequence: UInt64 = 0, stream name: String = "abc", auth: PeerAuth = auth, limit: Int = 100) -> String? {
            var buffer = ByteBuffer(bytes: bytes)
            do {
                _ = try PeerStreamFrame.next(from: &buffer, sequence: sequence, stream: name, auth: auth, limit: limit)
                return nil
            } catch {
                return "\(error)"
            }
        }
        let first = Array(whole.prefix(4 + PeerStreamFrame.macSize + 3))
        #expect(refusal(first) == nil)
        #expect(refusal(first, sequence: 1)?.contains("does not prove") == true, "a frame replayed at another place")
        #expect(refusal(first, stream: "abd")?.contains("does not prove") == true, "a frame moved to another stream")
        #expect(refusal(first, auth: PeerAuth(secret: "t"))?.contains("does not prove") == true, "another secret")
        var flipped = first
        flipped[flipped.count - 1] ^= 1
        #expect(refusal(flipped)?.contains("does not prove") == true, "a changed payload")
        #expect(refusal(first, limit: 2)?.contains("exceeds") == true)
    }

    @Test func aNodeStepsWhatItsStreamCarriesAndRefusesAStreamWithoutProof() async throws {
        let (node, port) = try await PeerTransportTests.node(secret: "s")
        defer { Task { await node.stop() } }
        let me = "127.0.0.1:\(port)"
        var partitions = 0
        for _ in 0..<100 where partitions == 0 {
            partitions = try await Self.partitions(node).count
            if partitions == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        try #require(partitions > 0, "the node's partitions never came up")
        // Without the secret, or with another partition count, the stream is refused at once.
        let stranger = try PeerConnection(address: me, auth: PeerAuth(secret: "x"), traffic: PeerTraffic(), logger: .init(label: "t"))
        let refused = try await stranger.post(path: PeerConnection.raftStreamPath, body: [], headers: [(PeerConnection.partitionsHeader, "\(partitions)")])
        #expect(refused.status == 401)
        let connection = try PeerConnection(address: me, auth: PeerAuth(secret: "s"), traffic: PeerTraffic(), logger: .init(label: "t"))
        let otherCount = try await connection.post(path: PeerConnection.raftStreamPath, body: [], headers: [(PeerConnection.partitionsHeader, "\(partitions + 1)")])
        #expect(otherCount.status == 409)
        // On the stream the replication driver uses: a frame that is not a Raft batch ends the
        // stream (the node lives); the sender opens a new one, and a heartbeat of a later epoch
        // from another leader on it is stepped: the node follows that leader.
        let traffic = PeerTraffic()
        let sender = try PeerConnection(address: me, auth: PeerAuth(secret: "s"), traffic: traffic, logger: .init(label: "t"))
        try await sender.sendRaft([1, 2, 3], partitionCount: partitions)
        #expect(try await node.request("GET", "/healthz").status == 200)
        #expect(try await Self.partitions(node)[0].epoch < 100)
        let heartbeat = RaftMessage(partition: 0, from: "127.0.0.1:1", to: me, term: 100, body: .heartbeat(commit: 0, sentAt: .zero))
        let batch = RaftCodec.encode(RaftBatch(partitionCount: partitions, from: "127.0.0.1:1", messages: [heartbeat]))
        var followed = false
        for _ in 0..<100 where !followed {
            try await sender.sendRaft(batch, partitionCount: partitions)
            try await Task.sleep(for: .milliseconds(20))
            followed = try await Self.partitions(node)[0].epoch == 100
        }
        #expect(followed, "the heartbeat on the stream was not stepped")
        #expect(traffic.requestsOut.load(ordering: .relaxed) == 2, "one stream ended by the bad frame, one that carried the heartbeat")
        await sender.close()
        await connection.close()
        await stranger.close()
    }

    @Test func callFramesRoundTripAndRefuseWhatIsMalformed() throws {
        let calls = [PeerCalls.Call(id: 0, route: "/v1/peer/kv", body: [1, 2]), PeerCalls.Call(id: 1 << 40, route: "", body: [])]
        let decoded = try PeerCalls.decodeCalls(PeerCalls.encode(calls))
        #expect(decoded.map(\.id) == [0, 1 << 40])
        #expect(decoded.map(\.route) == ["/v1/peer/kv", ""])
        #expect(decoded.map(\.body) == [[1, 2], []])
        let answers = [PeerCalls.Answer(id: 5, status: 200, body: [9]), PeerCalls.Answer(id: 3, status: 404, body: [])]
        let back = try PeerCalls.decodeAnswers(PeerCalls.encode(answers))
        #expect(back.map(\.id) == [5, 3])
        #expect(back.map(\.status) == [200, 404])
        #expect(back.map(\.body) == [[9], []])
        #expect(throws: WireError.self) { try PeerCalls.decodeCalls(PeerCalls.encode(calls) + [0]) }
        #expect(throws: WireError.self) { try PeerCalls.decodeCalls(Array(PeerCalls.encode(calls).dropLast())) }
        #expect(throws: WireError.self) { try PeerCalls.decodeAnswers([1, 0, 0xE8, 0x07, 0]) }
        // A frame takes what fits: never more than the count or (past its first) the bytes.
        #expect(PeerCalls.frameCount([]) == 0)
        #expect(PeerCalls.frameCount([PeerCalls.frameBytes * 2, 1]) == 1)
        #expect(PeerCalls.frameCount([PeerCalls.frameBytes / 2, PeerCalls.frameBytes / 2, 1]) == 2)
        #expect(PeerCalls.frameCount(repeatElement(0, count: PeerCalls.maxPerFrame + 5)) == PeerCalls.maxPerFrame)
        var tooMany = WireWriter()
        tooMany.varint(UInt64(PeerCalls.maxPerFrame + 1))
        #expect(throws: WireError.self) { try PeerCalls.decodeCalls(tooMany.bytes) }
    }

    @Test func callsShareOneStreamAndABadFrameEndsIt() async throws {
        let (node, port) = try await PeerTransportTests.node(secret: "s")
        defer { Task { await node.stop() } }
        for _ in 0..<100 where try await Self.partitions(node).contains(where: { $0.leader == nil }) {
            try await Task.sleep(for: .milliseconds(20))
        }
        func put(_ key: String, _ value: [UInt8]) -> [UInt8] {
            var w = WireWriter()
            w.string("")
            w.blob(KVOperation.put(key: key, value: value).encode())
            return w.bytes
        }
        let me = "127.0.0.1:\(port)"
        // Without the secret the stream is refused, and the call fails.
        let stranger = try PeerConnection(address: me, auth: PeerAuth(secret: "x"), traffic: PeerTraffic(), logger: .init(label: "t"))
        await #expect(throws: PeerCallError.self) { _ = try await stranger.call(route: KeyValueForwarding.path, body: put("a", [1])) }
        #expect(try await node.request("GET", "/v1/kv/a").status == 404, "a refused call changes nothing")

        // Fifty writes at once travel on one stream, each answered on its own.
        let traffic = PeerTraffic()
        let connection = try PeerConnection(address: me, auth: PeerAuth(secret: "s"), traffic: traffic, logger: .init(label: "t"))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<50 {
                group.addTask {
                    let answer = try await connection.call(route: KeyValueForwarding.path, body: put("k\(i)", [UInt8(i)]))
                    #expect(answer.status == 200)
                    let result = try KeyValueForwarding.decodeAnswer(answer.body, op: .put(key: "k\(i)", value: []), leader: me)
                    guard case .done = result else { Issue.record("answer \(result)"); return }
                }
            }
            try await group.waitForAll()
        }
        #expect(try await node.request("GET", "/v1/kv/k7").body == Data([7]))
        #expect(traffic.requestsOut.load(ordering: .relaxed) == 1, "one stream carried every call")
        #expect(try await connection.call(route: "/v1/peer/nothing", body: []).status == 404)
        // An answer that takes longer than the call's time fails the call; the stream lives.
        await #expect(throws: PeerCallError.self) { _ = try await connection.call(route: KeyValueForwarding.path, body: put("slow", [1]), timeout: TimeAmount.nanoseconds(1)) }
        #expect(try await connection.call(route: KeyValueForwarding.path, body: put("b", [2])).status == 200)
        #expect(traffic.requestsOut.load(ordering: .relaxed) == 1)

        // A frame out of place ends the stream; the next call opens a new one.
        let stream = try #require(connection.currentCallStream)
        let bad = PeerStreamFrame.encode(PeerCalls.encode([PeerCalls.Call(id: 999, route: KeyValueForwarding.path, body: put("c", [3]))]),
                                         sequence: 999, stream: stream.name, auth: PeerAuth(secret: "s"))
        try await stream.channel.writeAndFlush(HTTPClientRequestPart.body(.byteBuffer(bad))).get()
        for _ in 0..<100 where stream.isOpen { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!stream.isOpen, "the node ended the stream after the bad frame")
        #expect(try await node.request("GET", "/v1/kv/c").status == 404, "the bad frame's call did not run")
        #expect(try await connection.call(route: KeyValueForwarding.path, body: put("d", [4])).status == 200)
        #expect(traffic.requestsOut.load(ordering: .relaxed) == 2)
        await connection.close()
        await stranger.close()
    }

    static func partitions(_ node: TestNode) async throws -> [(epoch: Int, leader: String?)] {
        let view = try await node.request("GET", "/v1/cluster").json() as? [String: Any]
        let partitions = try #require(view?["partitions"] as? [[String: Any]])
        return partitions.map { (($0["epoch"] as? Int) ?? -1, $0["leader"] as? String) }
    }
}
