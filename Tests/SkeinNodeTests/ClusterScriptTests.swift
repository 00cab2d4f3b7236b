import Foundation
import Testing

/// The cluster/ scripts as a person uses them: up 3, status, kill, restart, pause/resume, down.
/// Runs on ports of its own and a data directory of its own (SKEIN_CLUSTER_PORT_BASE,
/// SKEIN_CLUSTER_DATA), with the binary the tests built.
@Suite(.serialized) struct ClusterScriptTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path

    static func script(_ name: String, _ arguments: [String] = [], data: String, base: Int) async throws -> (status: Int32, output: String) {
        try await run(root + "/cluster/" + name, arguments, environment: [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            "SKEIN_BIN": ProcessTests.binary, "SKEIN_CLUSTER_DATA": data, "SKEIN_CLUSTER_PORT_BASE": String(base),
        ])
    }

    /// The line of `status` output for `member` as seen by `observer`.
    static func row(_ status: String, observer: String, member: String) -> String? {
        var current: String?
        for line in status.split(separator: "\n") {
            if line.hasPrefix("== ") { current = String(line.dropFirst(3).prefix { $0 != ":" }); continue }
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if current == observer, fields.first.map(String.init) == member { return String(line) }
        }
        return nil
    }

    @Test func upStatusKillRestartPauseDown() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        // Client ports base+1…3 and peer ports base+1001…1003, in a range the kernel does not
        // hand out as ephemeral ports (32768 and up).
        let base = 20000 + Int.random(in: 0..<500) * 10
        let data = temporaryDirectory()
        try await Self.stoppingNodes(data: data, base: base) {
        let up = try await Self.script("up", ["3"], data: data, base: base)
        #expect(up.status == 0, "\(up.output)")
        #expect(up.output.contains("n3  client http://127.0.0.1:\(base + 3)"), "\(up.output)")
        // On a loaded machine a member may be `suspect` for a moment (and refute it): status
        // must show everyone alive within a few seconds, not at one instant.
        var status = try await Self.script("status", data: data, base: base)
        func allAlive(_ output: String) -> Bool {
            ["n1", "n2", "n3"].allSatisfy { observer in
                ["n1", "n2", "n3"].allSatisfy { Self.row(output, observer: observer, member: $0)?.contains("alive") == true }
            }
        }
        let settle = ContinuousClock.now + .seconds(10)
        while !allAlive(status.output), ContinuousClock.now < settle {
            try await Task.sleep(for: .milliseconds(300))
            status = try await Self.script("status", data: data, base: base)
        }
        #expect(allAlive(status.output), "\(status.output)")
        #expect(status.output.contains("partitions: 16"), "\(status.output)")
        #expect(status.output.contains("LEADS PARTITIONS"), "\(status.output)")
        #expect(try await Self.script("up", ["3"], data: data, base: base).status != 0, "a second up refuses while nodes run")

        #expect(try await Self.script("kill", ["n2"], data: data, base: base).status == 0)
        var dead = false
        for _ in 0..<40 where !dead {
            try await Task.sleep(for: .milliseconds(250))
            let now = try await Self.script("status", data: data, base: base).output
            dead = ["n1", "n3"].allSatisfy { Self.row(now, observer: $0, member: "n2")?.contains("dead") == true }
                && now.contains("== n2: not running")
        }
        #expect(dead, "n1 and n3 never said n2 is dead")

        #expect(try await Self.script("restart", ["n2"], data: data, base: base).status == 0)
        var back = false
        for _ in 0..<60 where !back {
            try await Task.sleep(for: .milliseconds(250))
            let now = try await Self.script("status", data: data, base: base).output
            back = ["n1", "n2", "n3"].allSatisfy { observer in
                ["n1", "n2", "n3"].allSatisfy { Self.row(now, observer: observer, member: $0)?.contains("alive") == true }
            }
        }
        #expect(back, "n2 did not come back alive everywhere")

        #expect(try await Self.script("pause", ["n3"], data: data, base: base).status == 0)
        let paused = try await Self.script("status", data: data, base: base).output
        #expect(paused.contains("== n3: paused (SIGSTOP)"), "\(paused)")
        #expect(try await Self.script("resume", ["n3"], data: data, base: base).status == 0)

        #expect(try await Self.script("kill", ["n9"], data: data, base: base).status != 0)
        #expect(try await Self.script("kill", ["bogus"], data: data, base: base).status == 2)

        let down = try await Self.script("down", data: data, base: base)
        #expect(down.output.contains("stopped 3 node(s)"), "\(down.output)")
        let after = try await Self.script("status", data: data, base: base).output
        #expect(after.components(separatedBy: "not running").count == 4, "\(after)")
        }
    }

    /// `cluster/chaos` as a person runs it: kills, pauses and restarts under writes and
    /// workflows, then every node agrees on every acknowledged write and every workflow ends.
    @Test func chaosBreaksTheClusterAndFindsNothingLost() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let base = 25000 + Int.random(in: 0..<500) * 10
        let data = temporaryDirectory()
        try await Self.stoppingNodes(data: data, base: base) {
        #expect(try await Self.script("chaos", ["5"], data: data, base: base).status == 1, "no cluster: refused")
        let up = try await Self.script("up", ["3"], data: data, base: base)
        #expect(up.status == 0, "\(up.output)")
        let chaos = try await Self.script("chaos", ["12", "7"], data: data, base: base)
        #expect(chaos.status == 0, "\(chaos.output)")
        #expect(chaos.output.contains("kill n") || chaos.output.contains("pause n"), "\(chaos.output)")
        #expect(chaos.output.contains(" 0 lost;") && chaos.output.contains("chaos: PASS (seed 7)"), "\(chaos.output)")
        #expect(try await Self.script("chaos", ["x"], data: data, base: base).status == 2)
        }
    }

    /// Runs `body`, then stops the nodes it started and waits for that before the test ends.
    /// (A `defer` could only start a task to do it, and when this test is the last to finish
    /// the test process exits first: the nodes went on running after the suite.)
    static func stoppingNodes(data: String, base: Int, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            _ = try? await script("down", data: data, base: base)
            throw error
        }
        _ = try? await script("down", data: data, base: base)
    }
}
