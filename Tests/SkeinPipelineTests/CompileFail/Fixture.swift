// Shared declarations for the compile-fail fixtures. Each fixture is type-checked together
// with this file against the built SkeinPipeline module (see CompileTimeAccessTests).
import SkeinPipeline

enum PostID: Slot { typealias Value = String }
enum PostBody: Slot { typealias Value = String }
enum Secret: Slot { typealias Value = String }

struct LoadView: SlotView {
    var id = Read<PostID>()
    var body = Write<PostBody>()
}
