// Reads a slot the view declares write-only: must not compile.
import SkeinPipeline

let readWriteOnly = Step("load", view: LoadView.self) { ctx in
    _ = try ctx.require(\.body)
    return .continue
}
