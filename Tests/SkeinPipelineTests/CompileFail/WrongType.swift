// Writes a value of the wrong type into a declared slot: must not compile.
import SkeinPipeline

let wrongType = Step("load", view: LoadView.self) { ctx in
    ctx.put(\.body, 42)
    return .continue
}
