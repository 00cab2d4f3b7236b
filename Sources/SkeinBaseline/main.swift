// The baseline of `cluster/bench pipeline`: bare Hummingbird, one route returning a short
// text, HTTP/1.1 and h2c on one port the way Skein serves them (so both pay for the same
// connection handling), built from the same dependencies in the same release build.
import Foundation
import Hummingbird
import HummingbirdHTTP2

let arguments = CommandLine.arguments
let port = arguments.count > 1 ? Int(arguments[1]) ?? 8090 : 8090
let h2c = arguments.contains("--h2c")

let router = Router()
router.get("/bench/pipeline") { _, _ in "digest 0\n" }
let app = Application(
    router: router,
    server: h2c ? .plaintextHTTP2() : .http1(),
    configuration: .init(address: .hostname("127.0.0.1", port: port), serverName: nil)
)
try await app.runService()
