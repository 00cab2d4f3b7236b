import Foundation
import SkeinPipeline

/// Routes that exercise each effect kind on a real node.
struct EffectsTestApp: SkeinApplication {
    enum Rows: Slot { typealias Value = [SQLRow] }
    enum Upstream: Slot { typealias Value = HTTPResult }
    enum Number: Slot { typealias Value = Int }

    struct RowsView: SlotView { var rows = Write<Rows>() }
    struct ReadRows: SlotView { var rows = Read<Rows>() }
    struct UpstreamView: SlotView { var upstream = Write<Upstream>() }
    struct ReadUpstream: SlotView { var upstream = Read<Upstream>() }
    struct NumberView: SlotView { var number = Write<Number>() }
    struct ReadNumber: SlotView { var number = Read<Number>() }

    static let renderRows = Step("t.render_rows", view: ReadRows.self) { ctx in
        let notes = try ctx.require(\.rows).compactMap { row -> String? in
            if case .text(let t) = row["note"] { return t }
            return nil
        }
        return .done(.json(notes))
    }
    static let query = Step("t.query", view: RowsView.self, continuations: [renderRows]) { ctx in
        .need(ctx.sqlQuery("SELECT note FROM t_notes ORDER BY id", into: \.rows), then: renderRows)
    }
    static let insert = Step("t.insert", view: RowsView.self, continuations: [query]) { ctx in
        .need([
            ctx.sqlExec("CREATE TABLE IF NOT EXISTS t_notes (id INTEGER PRIMARY KEY, note TEXT NOT NULL)"),
            ctx.sqlExec("INSERT INTO t_notes (note) VALUES (?)", [.text(String(decoding: ctx.request.body, as: UTF8.self))]),
        ], mode: .sequential, join: .all, then: query)
    }

    static let renderUpstream = Step("t.render_upstream", view: ReadUpstream.self) { ctx in
        let r = try ctx.require(\.upstream)
        return .done(.text("\(r.status) \(String(decoding: r.body, as: UTF8.self))"))
    }
    static let call = Step("t.call", view: UpstreamView.self, continuations: [renderUpstream]) { ctx in
        let url = ctx.request.queryParameter("url") ?? ""
        return .need(ctx.http(HTTPCall(url: url), into: \.upstream).timeout(.seconds(3)), then: renderUpstream)
    }

    static let renderNumber = Step("t.render_number", view: ReadNumber.self) { ctx in .done(.text("\(try ctx.require(\.number))")) }
    static let crunch = Step("t.compute", view: NumberView.self, continuations: [renderNumber]) { ctx in
        let ms = Int(ctx.request.queryParameter("ms") ?? "0") ?? 0
        return .need(ctx.compute("crunch", into: \.number) {
            if ms > 0 { Thread.sleep(forTimeInterval: Double(ms) / 1000) }
            return (1...1000).reduce(0, +)
        }.timeout(.seconds(10)), then: renderNumber)
    }

    enum Started: Slot { typealias Value = Data }
    struct StartedView: SlotView { var started = Write<Started>() }
    struct ReadStarted: SlotView { var started = Read<Started>() }
    static let renderStarted = Step("t.render_started", view: ReadStarted.self) { ctx in
        .done(Response(status: .accepted, headers: [.contentType: "application/json"], body: try ctx.require(\.started)))
    }
    /// POST /t/approve/{id}: starts an `approval` instance as an effect.
    static let startApproval = Step("t.start_approval", view: StartedView.self, continuations: [renderStarted]) { ctx in
        let id = ctx.request.parameters["id"] ?? ""
        return .need(ctx.workflowStart("approval", id: id, input: Data(#"{"delayMs":0}"#.utf8), into: \.started), then: renderStarted)
    }
    /// POST /t/approve/{id}/yes: signals it, as an effect.
    static let approved = Step("t.approved") { _ in .done(Response(status: .accepted)) }
    static let approve = Step("t.approve", continuations: [approved]) { ctx in
        .need(ctx.workflowSignal(id: ctx.request.parameters["id"] ?? "", name: "approval", payload: ctx.request.body), then: approved)
    }

    func register(_ routes: inout RouterBuilder) {
        routes.add(.post, "/t/approve/:id", steps: [Self.startApproval])
        routes.add(.post, "/t/approve/:id/yes", steps: [Self.approve])
        routes.add(.post, "/t/sql", steps: [Self.insert])
        routes.add(.get, "/t/http", steps: [Self.call])
        routes.add(.get, "/t/compute", steps: [Self.crunch])
        routes.add(.get, "/t/fail", steps: [Step("t.fail") { _ in .fail(SkeinError(code: 500, what: "boom")) }])
    }
}
