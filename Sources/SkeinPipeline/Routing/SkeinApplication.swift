/// An application a node hosts: it adds its routes (pipelines) to the node's router.
public protocol SkeinApplication: Sendable {
    func register(_ routes: inout RouterBuilder)
}
