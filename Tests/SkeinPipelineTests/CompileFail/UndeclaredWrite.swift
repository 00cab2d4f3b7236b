// Writes a slot the view does not declare: must not compile.
import SkeinPipeline

let undeclaredWrite = Step("load", view: LoadView.self) { ctx in
    ctx.put(\.secret, "leak")
    return .continue
}
