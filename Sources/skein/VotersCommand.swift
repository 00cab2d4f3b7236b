import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// `skein voters replace`: swap a voter that is gone for good for a new node, partition by
/// partition, printing each as it finishes.
struct VotersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "voters",
        abstract: "Change the voters of the cluster's partitions.",
        subcommands: [Replace.self]
    )

    struct Replace: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "replace",
            abstract: "Replace a voter that is gone for good by a new node, one partition and one change at a time.",
            discussion: """
                Start the new node first, its --seeds naming the cluster's nodes: it joins as a \
                non-voter. Then, for every partition, its leader adds the new node as a learner, \
                waits until it has caught up, removes the old voter and promotes the new one, \
                each change committed before the next. Asking again after an interruption picks \
                up where it stopped. Afterwards start every node with --seeds naming the new voters.
                """
        )

        @Option(help: ArgumentHelp("Client address of any live node.", valueName: "HOST:PORT")) var node = "127.0.0.1:8080"
        @Option(help: ArgumentHelp("Peer address of the voter to remove, as in --seeds.", valueName: "HOST:PORT")) var remove: String
        @Option(help: ArgumentHelp("Peer address of the node to make a voter in its place.", valueName: "HOST:PORT")) var add: String
        @Option(help: "Seconds to wait for all partitions before giving up (asking again resumes).") var timeout: Double = 120

        struct View: Decodable {
            struct Partition: Decodable { let id: Int }
            let partitions: [Partition]
        }

        struct Answer: Decodable {
            struct Partition: Decodable { let id: Int; let done: Bool; let detail: String; let voters: [String]? }
            let done: Bool
            let partitions: [Partition]
        }

        struct Failure: Decodable {
            struct Body: Decodable { let code: Int; let message: String }
            let error: Body
        }

        func run() async throws {
            let started = ContinuousClock.now
            let deadline = started + .milliseconds(Int64(timeout * 1000))
            let (status, viewBody) = await call("GET", "/v1/cluster", body: nil, timeout: .seconds(5))
            guard status == 200, let view = try? JSONDecoder().decode(View.self, from: viewBody) else {
                fail("\(node) answered \(status) to GET /v1/cluster")
            }
            guard !view.partitions.isEmpty else { fail("\(node) reports no partitions yet (replication is starting); retry shortly") }
            print("replacing voter \(remove) by \(add) on \(view.partitions.count) partitions through \(node)")
            var finished = 0
            for p in view.partitions.map(\.id) {
                let left = deadline - ContinuousClock.now
                guard left > .zero else { fail("timed out after \(finished) of \(view.partitions.count) partitions; run the same command again to resume") }
                let wait = Double(left.components.seconds) + Double(left.components.attoseconds) / 1e18
                let request = #"{"remove":"\#(remove)","add":"\#(add)","partitions":[\#(p)]}"#
                let (status, body) = await call("POST", "/v1/cluster/voters?wait=\(String(format: "%.1f", wait))",
                                                body: Data(request.utf8), timeout: .seconds(Int64(wait) + 10))
                if status == 200 || status == 504, let answer = try? JSONDecoder().decode(Answer.self, from: body), let result = answer.partitions.first {
                    guard result.done else {
                        fail("partition \(p) did not finish: \(result.detail); run the same command again to resume")
                    }
                    finished += 1
                    let voters = (result.voters ?? []).joined(separator: ",")
                    print("partition \(p): voters \(voters) (\(finished)/\(view.partitions.count), \(elapsed(since: started)))")
                } else if let failure = try? JSONDecoder().decode(Failure.self, from: body) {
                    fail("partition \(p): \(failure.error.message)")
                } else {
                    fail("partition \(p): \(node) answered \(status): \(String(decoding: body.prefix(300), as: UTF8.self))")
                }
            }
            print("done: \(add) replaced \(remove) as a voter of every partition in \(elapsed(since: started))")
        }

        func elapsed(since start: ContinuousClock.Instant) -> String {
            let d = ContinuousClock.now - start
            return String(format: "%.1f s", Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
        }

        func call(_ method: String, _ path: String, body: Data?, timeout: TimeAmount) async -> (Int, Data) {
            do {
                var request = HTTPClientRequest(url: "http://\(node)\(path)")
                request.method = .RAW(value: method)
                if let body {
                    request.headers.add(name: "content-type", value: "application/json")
                    request.body = .bytes(ByteBuffer(bytes: Array(body)))
                }
                let response = try await HTTPClient.shared.execute(request, timeout: timeout)
                let data = Data(try await response.body.collect(upTo: 4 << 20).readableBytesView)
                return (Int(response.status.code), data)
            } catch {
                fail("cannot reach \(node) (\(error))")
            }
        }

        func fail(_ line: String) -> Never {
            FileHandle.standardError.write(Data("skein: \(line)\n".utf8))
            Foundation.exit(1)
        }
    }
}
