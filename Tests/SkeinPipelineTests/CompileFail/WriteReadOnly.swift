// Writes a slot the view declares read-only: must not compile.
import SkeinPipeline

let writeReadOnly = Step("load", view: LoadView.self) { ctx in
    ctx.put(\.id, "other")
    return .continue
}
