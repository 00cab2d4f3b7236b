import Crypto
import Foundation

/// A built flow: its tree, every node by id, and the **definition hash** — SHA-256 over a
/// canonical text of the tree (kinds, ids, branch names, durations, task options). An instance
/// records the hash it started with; running or resuming it under a different definition is
/// always an error.
public struct Workflow: Sendable {
    public let name: String
    public let root: FlowNode
    public let definitionHash: String
    let nodes: [String: FlowNode]
    let parents: [String: String]
    let joins: [String: FlowNode.TaskNode]
    /// A join's id → its fork's id.
    let joinForks: [String: String]

    init(name: String, root: FlowNode) {
        self.name = name
        self.root = root
        var nodes: [String: FlowNode] = [:]
        var parents: [String: String] = [:]
        var joins: [String: FlowNode.TaskNode] = [:]
        var joinForks: [String: String] = [:]
        func visit(_ node: FlowNode, parent: String?) {
            nodes[node.id] = node
            if let parent { parents[node.id] = parent }
            switch node {
            case .sequence(_, let children): children.forEach { visit($0, parent: node.id) }
            case .fork(_, let branches, let join):
                joins[join.id] = join
                joinForks[join.id] = node.id
                branches.forEach { visit($0.node, parent: node.id) }
            case .route(let r):
                r.branches.forEach { visit($0.node, parent: node.id) }
                if let d = r.defaultBranch { visit(d, parent: node.id) }
            case .map(let m):
                joins[m.join.id] = m.join
                joinForks[m.join.id] = m.id
            case .task, .loop, .delay, .signal: break
            }
        }
        visit(root, parent: nil)
        self.nodes = nodes
        self.parents = parents
        self.joins = joins
        self.joinForks = joinForks
        let text = "workflow \(name)\n" + Self.canonical(root)
        definitionHash = SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    static func walk(_ node: FlowNode, _ visit: (FlowNode) -> Void) {
        visit(node)
        switch node {
        case .sequence(_, let children): children.forEach { walk($0, visit) }
        case .fork(_, let branches, _): branches.forEach { walk($0.node, visit) }
        case .route(let r):
            r.branches.forEach { walk($0.node, visit) }
            if let d = r.defaultBranch { walk(d, visit) }
        case .task, .loop, .delay, .signal, .map: break
        }
    }

    static func canonical(_ options: TaskOptions) -> String {
        let r = options.retry
        return "timeout=\(options.timeout.map { String($0.milliseconds) } ?? "none") retries=\(r.maxRetries) initial=\(r.initialDelay.milliseconds) multiplier=\(r.multiplier) max=\(r.maxDelay.milliseconds) tags=\(options.tags.joined(separator: ","))"
    }

    static func canonical(_ node: FlowNode) -> String {
        switch node {
        case .task(let t): return "task \(quoted(t.id)) \(canonical(t.options))\n"
        case .sequence(let id, let children): return "sequence \(quoted(id)) {\n" + children.map(canonical).joined() + "}\n"
        case .fork(let id, let branches, let join):
            return "fork \(quoted(id)) {\n" + branches.map { "branch \(quoted($0.name)) {\n" + canonical($0.node) + "}\n" }.joined()
                + "join \(quoted(join.id)) \(canonical(join.options))\n}\n"
        case .loop(let l):
            return "loop \(quoted(l.id)) max=\(l.maxIterations) onMax=\(l.onMax.rawValue) \(canonical(l.options))\n"
        case .route(let r):
            return "route \(quoted(r.id)) {\n" + r.branches.map { "branch \(quoted($0.name)) {\n" + canonical($0.node) + "}\n" }.joined()
                + (r.defaultBranch.map { "default {\n" + canonical($0) + "}\n" } ?? "") + "}\n"
        case .delay(let id, let d): return "delay \(quoted(id)) \(d.canonical)\n"
        case .signal(let id, let name, let timeout): return "signal \(quoted(id)) name=\(quoted(name)) timeout=\(timeout?.canonical ?? "none")\n"
        case .map(let m): return "map \(quoted(m.id)) \(canonical(m.options)) join \(quoted(m.join.id)) \(canonical(m.join.options))\n"
        }
    }

    static func quoted(_ s: String) -> String {
        String(decoding: try! JSONEncoder().encode(s), as: UTF8.self)
    }

    /// The options and body of the task-like node `id` (a task, a fork's join, a loop's body).
    public func taskBody(_ id: String) -> (options: TaskOptions, body: TaskBody)? { task(for: id) }

    func task(for id: String) -> (options: TaskOptions, body: TaskBody)? {
        switch nodes[id] {
        case .task(let t)?: return (t.options, t.body)
        case .loop(let l)?: return (l.options, l.body)
        case nil:
            // A fan-out copy: `id[i]`.
            if id.hasSuffix("]"), let open = id.lastIndex(of: "["), case .map(let m)? = nodes[String(id[..<open])] { return (m.options, m.body) }
            return joins[id].map { ($0.options, $0.body) }
        default: return joins[id].map { ($0.options, $0.body) }
        }
    }
}
