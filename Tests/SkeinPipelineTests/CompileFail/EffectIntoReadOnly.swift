// Delivers an effect's result into a read-only slot: must not compile.
import SkeinPipeline

enum Cached: Slot { typealias Value = Data? }
struct CacheView: SlotView { var cached = Read<Cached>() }

let effectIntoReadOnly = Step("load", view: CacheView.self) { ctx in
    .need(ctx.kvGet("k", into: \.cached))
}
import Foundation
