// Reads a slot the view does not declare: must not compile.
import SkeinPipeline

let undeclaredRead = Step("load", view: LoadView.self) { ctx in
    _ = try ctx.require(\.secret)
    return .continue
}
