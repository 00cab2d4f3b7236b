import Foundation
import Testing

/// Proves that slot access is checked by the compiler: each fixture in `CompileFail/` (kept out
/// of the build) is type-checked against the built SkeinPipeline module and must fail with the
/// expected diagnostic, while the control fixture must type-check.
@Suite struct CompileTimeAccessTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("CompileFail")

    /// The directory holding the built `.swiftmodule`s of this build.
    static var modulesDirectory: URL? {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = executable.deletingLastPathComponent()
        for _ in 0..<6 {
            let candidate = dir.appendingPathComponent("Modules")
            if FileManager.default.fileExists(atPath: candidate.appendingPathComponent("SkeinPipeline.swiftmodule").path) {
                return candidate
            }
            dir = dir.deletingLastPathComponent()
        }
        let fallback = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../.build/debug/Modules").standardized
        return FileManager.default.fileExists(atPath: fallback.path) ? fallback : nil
    }

    /// Type-checks a fixture in a child process, without blocking the cooperative thread pool.
    static func typecheck(_ fixture: String) async throws -> (status: Int32, output: String) {
        let modules = try #require(modulesDirectory, "built modules not found next to the test binary")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["swiftc", "-typecheck", "-I", modules.path,
                             fixtures.appendingPathComponent("Fixture.swift").path,
                             fixtures.appendingPathComponent(fixture).path]
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("skein-typecheck-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        let (exited, sink) = AsyncStream.makeStream(of: Int32.self)
        process.terminationHandler = { sink.yield($0.terminationStatus) }
        try process.run()
        var iterator = exited.makeAsyncIterator()
        let status = await iterator.next() ?? -1
        try handle.close()
        defer { try? FileManager.default.removeItem(at: output) }
        return (status, String(decoding: try Data(contentsOf: output), as: UTF8.self))
    }

    @Test func declaredAccessCompiles() async throws {
        let result = try await Self.typecheck("Allowed.swift")
        #expect(result.status == 0, "control fixture failed to type-check:\n\(result.output)")
    }

    @Test(arguments: [
        ("UndeclaredRead.swift", "value of type 'LoadView' has no member 'secret'"),
        ("UndeclaredWrite.swift", "value of type 'LoadView' has no member 'secret'"),
        ("WriteReadOnly.swift", "requires that 'Read<PostID>' conform to 'WriteAccess'"),
        ("ReadWriteOnly.swift", "requires that 'Write<PostBody>' conform to 'ReadAccess'"),
        ("WrongType.swift", "cannot convert value of type 'Int'"),
        ("EffectIntoReadOnly.swift", "requires that 'Read<Cached>' conform to 'WriteAccess'"),
    ])
    func undeclaredAccessDoesNotCompile(fixture: String, diagnostic: String) async throws {
        let result = try await Self.typecheck(fixture)
        #expect(result.status != 0, "\(fixture) type-checked, but must not")
        #expect(result.output.contains("error: \(diagnostic)") || result.output.contains(diagnostic),
                "\(fixture) failed for another reason:\n\(result.output)")
        // Exactly the one error the fixture is about, nothing else broken.
        let errors = result.output.split(separator: "\n").filter { $0.hasPrefix("/") && $0.contains(": error: ") }
        #expect(errors.count == 1, "expected one error in \(fixture):\n\(result.output)")
    }
}
