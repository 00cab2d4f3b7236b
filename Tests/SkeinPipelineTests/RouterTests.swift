import SkeinPipeline
import Testing

@Suite struct RouterTests {
    static func table(_ patterns: [(String, String)]) throws -> RouteTable<String> {
        var table = RouteTable<String>()
        for (method, pattern) in patterns { try table.add(method: method, pattern: pattern, value: "\(method) \(pattern)") }
        return table
    }

    static func found(_ match: RouteTable<String>.Match) -> (String, [String: String])? {
        if case .found(let value, let parameters, _) = match { return (value, parameters) }
        return nil
    }

    @Test func literalsParametersAndWildcards() throws {
        let t = try Self.table([("GET", "/posts/:id"), ("GET", "/files/*path"), ("GET", "/posts/:id/comments/:cid")])
        #expect(Self.found(t.match(method: "GET", path: "/posts/42"))?.1 == ["id": "42"])
        #expect(Self.found(t.match(method: "GET", path: "/posts/42/comments/7"))?.1 == ["id": "42", "cid": "7"])
        #expect(Self.found(t.match(method: "GET", path: "/files/a/b/c.txt"))?.1 == ["path": "a/b/c.txt"])
        #expect(Self.found(t.match(method: "GET", path: "/files"))?.1 == ["path": ""])
        #expect(Self.found(t.match(method: "GET", path: "/posts/a%20b"))?.1 == ["id": "a b"], "parameters are percent-decoded")
        #expect(Self.found(t.match(method: "GET", path: "/posts/42/")) != nil, "a trailing slash is ignored")
    }

    @Test func moreLiteralSegmentsWin() throws {
        let t = try Self.table([("GET", "/posts/:id"), ("GET", "/posts/new")])
        #expect(Self.found(t.match(method: "GET", path: "/posts/new"))?.0 == "GET /posts/new")
        #expect(Self.found(t.match(method: "GET", path: "/posts/7"))?.0 == "GET /posts/:id")
    }

    @Test func thenFewerParametersWin() throws {
        let t = try Self.table([("GET", "/a/:x/:y"), ("GET", "/a/:x/*rest"), ("GET", "/:p/b/:q"), ("GET", "/a/:x")])
        // /a/b/c: "/a/:x/:y" and "/:p/b/:q" both have 1 literal, 2 params; registration order decides.
        #expect(Self.found(t.match(method: "GET", path: "/a/b/c"))?.0 == "GET /a/:x/:y")
        #expect(Self.found(t.match(method: "GET", path: "/a/b"))?.0 == "GET /a/:x")
    }

    @Test func aParameterBeatsAWildcardThenRegistrationOrder() throws {
        let t = try Self.table([("GET", "/f/*rest"), ("GET", "/f/:one")])
        #expect(Self.found(t.match(method: "GET", path: "/f/x"))?.0 == "GET /f/:one")
        let u = try Self.table([("GET", "/:a/x"), ("GET", "/x/:b")])
        #expect(Self.found(u.match(method: "GET", path: "/x/x"))?.0 == "GET /:a/x", "first registered wins a full tie")
    }

    @Test func aLiteralRouteWithoutTheMethodFallsBackToAParameterRoute() throws {
        let t = try Self.table([("GET", "/posts/new"), ("DELETE", "/posts/:id")])
        #expect(Self.found(t.match(method: "GET", path: "/posts/new"))?.0 == "GET /posts/new")
        #expect(Self.found(t.match(method: "DELETE", path: "/posts/new"))?.1 == ["id": "new"])
        #expect(Self.found(t.match(method: "GET", path: "//posts/new/"))?.0 == "GET /posts/new", "non-canonical paths still match")
    }

    @Test func headFallsBackToGet() throws {
        let t = try Self.table([("GET", "/p")])
        #expect(Self.found(t.match(method: "HEAD", path: "/p"))?.0 == "GET /p")
    }

    @Test func wrongMethodIs405WithAllow() throws {
        let t = try Self.table([("GET", "/p"), ("POST", "/p")])
        guard case .methodNotAllowed(let allow) = t.match(method: "DELETE", path: "/p") else {
            Issue.record("expected 405")
            return
        }
        #expect(allow == ["GET", "HEAD", "OPTIONS", "POST"])
        #expect(t.allowedMethods(path: "/p") == ["GET", "HEAD", "OPTIONS", "POST"])
    }

    @Test func unknownPathIs404() throws {
        let t = try Self.table([("GET", "/p")])
        guard case .notFound = t.match(method: "GET", path: "/q") else {
            Issue.record("expected 404")
            return
        }
        #expect(t.allowedMethods(path: "/q") == nil)
    }

    @Test func badPatternsAreRejected() {
        var t = RouteTable<String>()
        #expect(throws: RouteError.self) { try t.add(method: "GET", pattern: "nope", value: "") }
        #expect(throws: RouteError.self) { try t.add(method: "GET", pattern: "/a/*rest/b", value: "") }
        #expect(throws: RouteError.self) { try t.add(method: "GET", pattern: "/a/:x/:x", value: "") }
        #expect(throws: RouteError.self) { try t.add(method: "GET", pattern: "/a/:", value: "") }
        #expect(throws: Never.self) { try t.add(method: "GET", pattern: "/a", value: "") }
        #expect(throws: RouteError.self) { try t.add(method: "GET", pattern: "/a", value: "") }
    }
}
