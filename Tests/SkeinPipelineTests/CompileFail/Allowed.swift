// Control: the declared accesses type-check. If this fails, the harness is broken, not the views.
import SkeinPipeline

let allowed = Step("load", view: LoadView.self) { ctx in
    let id = try ctx.require(\.id)
    ctx.put(\.body, "post \(id)")
    return .continue
}
