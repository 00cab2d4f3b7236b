import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SkeinCluster
import SkeinPipeline
import SkeinStore
import SkeinWorkflow


/// The workflow API of CONTRACT.md on every node. A request about an instance is answered by
/// the owner of its partition (the leader holding the lease); any other node forwards it there
/// in one hop over the peer port (a `/v1/peer/wf` call on the peer call stream, the request as it came). While the
/// partition has no owner the request waits up to 2 s for one, then answers 503 with
/// `Retry-After`.
struct WorkflowRoutes: Sendable {
    typealias Response = SkeinPipeline.Response
    static let peerPath = "/v1/peer/wf"
    let cluster: ClusterHandle
    let renderer: any ErrorRenderer

    static func handles(_ path: String) -> Bool {
        path.hasPrefix("/v1/workflows/") || path == "/v1/instances" || path.hasPrefix("/v1/instances/")
    }

    struct Request: Sendable {
        var method: String
        var path: String
        var query: String?
        var body: Data
    }

    func answer(_ request: Request) async -> Response {
        do {
            return try await route(request, forwarded: false)
        } catch let failure as WorkflowFailure {
            return render(failure)
        } catch let error as SkeinError {
            return renderer.render(error)
        } catch {
            return render(WorkflowFailure(code: 500, what: "internal", description: "\(error)"))
        }
    }

    func render(_ f: WorkflowFailure) -> Response {
        var response = renderer.render(SkeinError(code: f.code, what: f.what, message: f.description))
        if f.code == 503 { response.headers[.retryAfter] = "1" }
        return response
    }

    /// Where `request` goes: the instance it is about (nil for the list).
    func route(_ request: Request, forwarded: Bool) async throws -> Response {
        let parts = request.path.split(separator: "/", omittingEmptySubsequences: true).map { String($0).removingPercentEncoding ?? String($0) }
        // /v1/workflows/{workflow}/instances
        if parts.count == 4, parts[1] == "workflows", parts[3] == "instances" {
            guard request.method == "POST" else { throw notAllowed(request.path, "POST") }
            let start = try StartBody.parse(request.body)
            return try await onOwner(of: start.id, request, forwarded: forwarded) { engine in
                try await self.start(engine, workflow: parts[2], start, query: request.query)
            }
        }
        guard parts.count >= 2, parts[1] == "instances" else {
            throw WorkflowFailure(code: 404, what: "route_not_found", description: "no route for \(request.method) \(request.path)")
        }
        if parts.count == 2 {
            guard request.method == "GET" || request.method == "HEAD" else { throw notAllowed(request.path, "GET") }
            return try await list(request, forwarded: forwarded)
        }
        let id = parts[2]
        try Self.check(id: id)
        switch (request.method, parts.count, parts.count > 3 ? parts[3] : "") {
        case ("GET", 3, _), ("HEAD", 3, _):
            return try await onOwner(of: id, request, forwarded: forwarded) { engine in
                guard let (state, epoch) = try await engine.state(id) else { throw Self.notFound(id) }
                return .json(raw: StatusView.json(state, owner: engine.node, epoch: epoch))
            }
        case ("GET", 4, "timeline"), ("HEAD", 4, "timeline"):
            return try await onOwner(of: id, request, forwarded: forwarded) { engine in
                guard try await engine.state(id) != nil else { throw Self.notFound(id) }
                let lines = try await engine.replication.store.timeline(id)
                var out = Data("[".utf8)
                for (i, line) in lines.enumerated() {
                    if i > 0 { out.append(UInt8(ascii: ",")) }
                    out.append(contentsOf: line)
                }
                out.append(UInt8(ascii: "]"))
                return .json(raw: out)
            }
        case ("POST", 5, "signals"):
            let name = parts[4]
            guard !name.isEmpty, name.utf8.count <= 256 else { throw WorkflowFailure(code: 400, what: "invalid_signal", description: "a signal name is 1–256 bytes") }
            let payload: Payload
            do {
                payload = try WorkflowCodec.validate(request.body.isEmpty ? Data("null".utf8) : request.body)
            } catch {
                throw WorkflowFailure(code: 400, what: "invalid_body", description: "a signal's body must be JSON: \(error)")
            }
            return try await onOwner(of: id, request, forwarded: forwarded) { engine in
                let state = try await engine.apply(.signal(name: name, payload: payload), to: id)
                return .json(raw: StatusView.json(state, owner: engine.node, epoch: engine.epoch(of: id)), status: .accepted)
            }
        case ("POST", 4, let op) where ["cancel", "pause", "unpause", "resume"].contains(op):
            let reason = (try? JSONDecoder().decode([String: String].self, from: request.body))?["reason"]
            let event: InstanceEvent = switch op {
            case "cancel": .cancel(reason: reason)
            case "pause": .pause(reason: reason)
            case "unpause": .unpause
            default: .resume
            }
            return try await onOwner(of: id, request, forwarded: forwarded) { engine in
                let state = try await engine.apply(event, to: id)
                return .json(raw: StatusView.json(state, owner: engine.node, epoch: engine.epoch(of: id)))
            }
        default:
            throw WorkflowFailure(code: 404, what: "route_not_found", description: "no route for \(request.method) \(request.path)")
        }
    }

    static func notFound(_ id: String) -> WorkflowFailure {
        WorkflowFailure(code: 404, what: "instance_not_found", description: "no instance \(id)")
    }

    func notAllowed(_ path: String, _ allow: String) -> WorkflowFailure {
        WorkflowFailure(code: 405, what: "method_not_allowed", description: "\(path) answers \(allow)")
    }

    static func check(id: String) throws {
        guard !id.isEmpty, id.utf8.count <= 512, !id.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw WorkflowFailure(code: 400, what: "invalid_id", description: "an instance id is 1–512 bytes of UTF-8 without control characters")
        }
    }

    struct StartBody {
        var id: String
        var input: Payload
        var policy: ConflictPolicy

        static func parse(_ body: Data) throws -> StartBody {
            let object: [String: Any]
            do {
                guard let o = try JSONSerialization.jsonObject(with: body) as? [String: Any] else { throw CodecError("not an object") }
                object = o
            } catch {
                throw WorkflowFailure(code: 400, what: "invalid_body", description: #"expected {"id": "…", "input": …, "conflictPolicy": "fail|useExisting|terminateExisting"}: the body is not a JSON object"#)
            }
            guard let id = object["id"] as? String else {
                throw WorkflowFailure(code: 400, what: "invalid_id", description: "the body needs \"id\", a string")
            }
            try WorkflowRoutes.check(id: id)
            let input: Payload
            if let raw = object["input"] {
                input = Payload(json: try JSONSerialization.data(withJSONObject: raw, options: [.fragmentsAllowed, .sortedKeys, .withoutEscapingSlashes]))
            } else {
                input = .null
            }
            var policy = ConflictPolicy.fail
            if let p = object["conflictPolicy"] {
                guard let name = p as? String, let parsed = ConflictPolicy(rawValue: name) else {
                    throw WorkflowFailure(code: 400, what: "invalid_conflict_policy", description: "conflictPolicy is fail, useExisting or terminateExisting")
                }
                policy = parsed
            }
            return StartBody(id: id, input: input, policy: policy)
        }
    }

    private func start(_ engine: WorkflowEngine, workflow: String, _ body: StartBody, query: String?) async throws -> Response {
        var wait: Double = 0
        if let item = query?.split(separator: "&").first(where: { $0.hasPrefix("wait=") }) {
            guard let seconds = Double(item.dropFirst(5)), seconds >= 0, seconds <= 300 else {
                throw WorkflowFailure(code: 400, what: "invalid_wait", description: "wait is a number of seconds from 0 to 300")
            }
            wait = seconds
        }
        var (state, created) = try await engine.start(workflow: workflow, id: body.id, input: body.input, policy: body.policy)
        let deadline = ContinuousClock.now + .milliseconds(Int64(wait * 1000))
        // A retry's backoff is not a park: keep waiting through it.
        func running(_ s: InstanceState) -> Bool {
            s.status == .inProgress || (s.status == .waiting && !s.frames.values.contains { $0.kind == .delay || $0.kind == .signal })
        }
        while wait > 0, running(state), ContinuousClock.now < deadline {
            // Woken by the runner as each checkpoint commits; a parked or moved instance is read
            // again after a short pause.
            if let changed = await engine.change(of: body.id, after: state.version, until: deadline), changed.version > state.version {
                state = changed
                continue
            }
            try await Task.sleep(for: .milliseconds(5))
            guard let (latest, _) = try await engine.state(body.id) else { break }
            state = latest
        }
        let status: HTTPResponse.Status = state.status == .completed && (wait > 0 || !created) ? .ok : (created ? .accepted : .ok)
        return .json(raw: StatusView.json(state, owner: engine.node, epoch: engine.epoch(of: body.id)), status: status)
    }

    /// Runs `work` on this node if it owns `id`'s partition, else forwards `request` to the
    /// partition's leader (once). Retries for up to 2 s while there is no owner.
    private func onOwner(of id: String, _ request: Request, forwarded: Bool, _ work: @escaping @Sendable (WorkflowEngine) async throws -> Response) async throws -> Response {
        let deadline = ContinuousClock.now + .seconds(2)
        while true {
            do {
                guard let engine = cluster.workflows, let replication = cluster.replication else {
                    throw WorkflowFailure(code: 503, what: "starting", description: "the node is still starting; retry")
                }
                let p = Partitioning.partition(of: id, count: replication.partitionCount)
                let leader = replication.status[p].leader
                if leader == replication.me || forwarded {
                    return try await work(engine)
                }
                guard let leader else { throw WorkflowFailure(code: 503, what: "no_owner", description: "partition \(p) has no leader right now; retry") }
                return try await forward(request, to: leader)
            } catch let f as WorkflowFailure where f.code == 503 && ContinuousClock.now < deadline && !forwarded {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    private func forward(_ request: Request, to leader: RaftNodeID) async throws -> Response {
        var w = WireWriter()
        w.string(request.method)
        w.string(request.path, max: 1 << 16)
        w.string(request.query ?? "", max: 1 << 16)
        w.blob(Array(request.body))
        let answer: PeerAnswer
        do {
            answer = try await cluster.peers.connection(to: leader).call(route: Self.peerPath, body: w.bytes, timeout: .seconds(310))
        } catch {
            throw WorkflowFailure(code: 503, what: "leader_unreachable", description: "the owner of this instance (\(leader)) did not answer: \(error); retry")
        }
        guard answer.status == 200 else {
            throw WorkflowFailure(code: 502, what: "bad_peer_answer", description: "the owner \(leader) answered \(answer.status)")
        }
        var r = WireReader(bytes: answer.body)
        do {
            let status = Int(try r.varint("status"))
            let body = try r.blob("body", max: 64 << 20)
            if status == 503 {
                // The owner moved on meanwhile: let the caller's wait for an owner go round again.
                let message = ((try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])?["error"] as? [String: Any])?["message"] as? String
                throw WorkflowFailure(code: 503, what: "no_owner", description: message ?? "the owner of this instance changed; retry")
            }
            var response = Response(status: HTTPResponse.Status(code: status), body: Data(body))
            response.headers[.contentType] = "application/json"
            if status == 503 { response.headers[.retryAfter] = "1" }
            return response
        } catch {
            throw WorkflowFailure(code: 502, what: "bad_peer_answer", description: "malformed answer from \(leader): \(error)")
        }
    }

    /// A `/v1/peer/wf` call: a request forwarded by another node; answered here, never forwarded again.
    static func serve(_ body: [UInt8], cluster: ClusterHandle, renderer: any ErrorRenderer) async -> (Int, [UInt8]) {
        var r = WireReader(bytes: body)
        let request: Request
        do {
            request = Request(method: try r.string("method"), path: try r.string("path", max: 1 << 16),
                              query: try r.string("query", max: 1 << 16), body: Data(try r.blob("body", max: 64 << 20)))
        } catch {
            return (400, Array("malformed forwarded workflow request: \(error)".utf8))
        }
        let routes = WorkflowRoutes(cluster: cluster, renderer: renderer)
        let response: Response
        do {
            response = try await routes.route(Request(method: request.method, path: request.path, query: request.query?.isEmpty == true ? nil : request.query, body: request.body), forwarded: true)
        } catch let f as WorkflowFailure {
            response = routes.render(f)
        } catch let error as SkeinError {
            response = renderer.render(error)
        } catch {
            response = routes.render(WorkflowFailure(code: 500, what: "internal", description: "\(error)"))
        }
        var w = WireWriter()
        w.varint(UInt64(response.status.code))
        w.blob(Array(response.body))
        return (200, w.bytes)
    }

    /// `GET /v1/instances?status=S&limit=N`: every partition's owner lists its own (a
    /// forwarded list names its partition), merged by id.
    private func list(_ request: Request, forwarded: Bool) async throws -> Response {
        var status: String?
        var limit = 100
        var only: Int?
        for item in (request.query ?? "").split(separator: "&") {
            let kv = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { continue }
            switch kv[0] {
            case "status":
                guard InstanceStatus(rawValue: kv[1]) != nil else {
                    throw WorkflowFailure(code: 400, what: "invalid_status", description: "status is one of \(InstanceStatus.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                status = kv[1]
            case "limit":
                guard let n = Int(kv[1]), n >= 1, n <= 10_000 else { throw WorkflowFailure(code: 400, what: "invalid_limit", description: "limit is 1–10000") }
                limit = n
            case "partition": only = Int(kv[1])
            default: break
            }
        }
        guard let replication = cluster.replication, let engine = cluster.workflows else {
            throw WorkflowFailure(code: 503, what: "starting", description: "the node is still starting; retry")
        }
        if forwarded, let p = only {
            guard try await replication.ownsCaughtUp(partition: p) else { throw WorkflowFailure(code: 503, what: "no_owner", description: "partition \(p) moved; retry") }
            let rows = try await replication.store.instances(partition: p, status: status, limit: limit)
            let epoch = await replication.epoch(partition: p)
            return .json(raw: StatusView.array(try rows.map { try JSONDecoder().decode(InstanceState.self, from: Data($0.state)) }, owner: engine.node, epoch: epoch))
        }
        let query = [status.map { "status=\($0)" }, "limit=\(limit)"].compactMap { $0 }.joined(separator: "&")
        let bodies = try await withThrowingTaskGroup(of: Data.self) { group in
            for p in 0..<replication.partitionCount {
                group.addTask {
                    let sub = Request(method: "GET", path: "/v1/instances", query: query + "&partition=\(p)", body: Data())
                    let leader = replication.status[p].leader
                    let response: Response
                    if leader == replication.me {
                        response = try await self.route(sub, forwarded: true)
                    } else if let leader {
                        response = try await self.forward(sub, to: leader)
                    } else {
                        throw WorkflowFailure(code: 503, what: "no_owner", description: "partition \(p) has no leader right now; retry")
                    }
                    guard response.status == .ok else {
                        throw WorkflowFailure(code: 503, what: "no_owner", description: "partition \(p) answered \(response.status.code); retry")
                    }
                    return response.body
                }
            }
            var all: [Data] = []
            for try await body in group { all.append(body) }
            return all
        }
        let all = bodies.flatMap { (try? JSONSerialization.jsonObject(with: $0) as? [[String: Any]]) ?? [] }
        let sorted = all.sorted { ($0["id"] as? String ?? "") < ($1["id"] as? String ?? "") }.prefix(limit)
        return .json(raw: try JSONSerialization.data(withJSONObject: Array(sorted), options: [.sortedKeys, .withoutEscapingSlashes]))
    }
}

/// An instance's status as the API shows it (CONTRACT.md).
enum StatusView {
    static func object(_ s: InstanceState, owner: String, epoch: UInt64) -> [String: Any] {
        var o: [String: Any] = ["id": s.id, "workflow": s.workflow, "status": s.status.rawValue, "owner": owner,
                                "epoch": epoch, "completedTasks": s.completedTasks]
        if let output = s.output { o["output"] = (try? JSONSerialization.jsonObject(with: output.json, options: [.fragmentsAllowed])) ?? NSNull() }
        if let error = s.error { o["error"] = error }
        if let wake = s.wakeAt { o["wakeAt"] = TimelineLine.format(wake) }
        if let signal = s.signalName, s.status == .awaitingSignal { o["signalName"] = signal }
        return o
    }

    static func json(_ s: InstanceState, owner: String, epoch: UInt64) -> Data {
        (try? JSONSerialization.data(withJSONObject: object(s, owner: owner, epoch: epoch), options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    static func array(_ states: [InstanceState], owner: String, epoch: UInt64) -> Data {
        (try? JSONSerialization.data(withJSONObject: states.map { object($0, owner: owner, epoch: epoch) }, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("[]".utf8)
    }
}
