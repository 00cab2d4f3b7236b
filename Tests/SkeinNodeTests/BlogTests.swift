import Foundation
import Testing

/// The blog example over a real socket, HTTP/1.1 (AsyncHTTPClient) and HTTP/2 (nghttp).
@Suite struct BlogTests {
    @Test func crudOverHTTP1() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        try await node.waitForPartitions()

        let created = try await node.request("POST", "/blog/posts", body: #"{"title":"First","content":"Hello","author":"ada"}"#)
        #expect(created.status == 201)
        let post = try #require(try created.json() as? [String: Any])
        let id = try #require(post["id"] as? String)
        #expect(created.headers["location"] == "/blog/posts/\(id)")
        #expect(created.headers["skein-trace-id"]?.count == 32)

        let fetched = try await node.request("GET", "/blog/posts/\(id)")
        #expect(fetched.status == 200)
        #expect((try fetched.json() as? [String: Any])?["title"] as? String == "First")

        let replaced = try await node.request("PUT", "/blog/posts/\(id)", body: #"{"title":"Second","content":"Hi","author":"ada"}"#)
        #expect(replaced.status == 200)
        let patched = try await node.request("PATCH", "/blog/posts/\(id)", body: #"{"content":"Patched"}"#)
        #expect((try patched.json() as? [String: Any])?["content"] as? String == "Patched")
        #expect((try patched.json() as? [String: Any])?["title"] as? String == "Second")

        let list = try await node.request("GET", "/blog/posts")
        #expect((try list.json() as? [[String: Any]])?.count == 1)

        let comment = try await node.request("POST", "/blog/posts/\(id)/comments", body: #"{"author":"bob","content":"nice"}"#)
        #expect(comment.status == 201)
        let commentID = try #require((try comment.json() as? [String: Any])?["id"] as? String)
        let comments = try await node.request("GET", "/blog/posts/\(id)/comments")
        #expect((try comments.json() as? [[String: Any]])?.first?["content"] as? String == "nice")
        #expect(try await node.request("DELETE", "/blog/posts/\(id)/comments/\(commentID)").status == 204)
        #expect(try await node.request("DELETE", "/blog/posts/\(id)/comments/\(commentID)").status == 404)

        _ = try await node.request("POST", "/blog/posts/\(id)/comments", body: #"{"author":"bob","content":"again"}"#)
        #expect(try await node.request("DELETE", "/blog/posts/\(id)").status == 204)
        #expect(try await node.request("GET", "/blog/posts/\(id)").status == 404)
        #expect(try await node.request("GET", "/blog/posts/\(id)/comments").status == 404)

        let page = try await node.request("GET", "/blog")
        #expect(page.status == 200)
        #expect(page.headers["content-type"]?.hasPrefix("text/html") == true)
    }

    @Test func validationNamesTheField() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        try await node.waitForPartitions()
        let cases: [(String, String)] = [
            (#"{"title":"","content":"c","author":"a"}"#, "title"),
            (#"{"title":"t","content":"  ","author":"a"}"#, "content"),
            (#"{"title":"t","content":"c","author":""}"#, "author"),
            ("{\"title\":\"\(String(repeating: "x", count: 201))\",\"content\":\"c\",\"author\":\"a\"}", "title"),
            (#"{"title":"t","content":"c"}"#, "author"),
            (#"{"title":7,"content":"c","author":"a"}"#, "title"),
        ]
        for (body, field) in cases {
            let r = try await node.request("POST", "/blog/posts", body: body)
            #expect(r.status == 400, "\(body)")
            #expect(r.error?["key"] as? String == field, "\(body) → \(r.text)")
            #expect(r.error?["code"] as? Int == 400)
        }
        let garbage = try await node.request("POST", "/blog/posts", body: "{not json")
        #expect(garbage.status == 400)
        #expect(garbage.error?["what"] as? String == "invalid_json")
        #expect(try await node.request("GET", "/blog/posts/missing").status == 404)
        #expect(try await node.request("PUT", "/blog/posts/missing", body: #"{"title":"t","content":"c","author":"a"}"#).status == 404)
        #expect(try await node.request("GET", "/blog/posts/bad$id").status == 400)
    }

    @Test func crudOverHTTP2WithNghttp() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        try await node.waitForPartitions()
        let file = temporaryDirectory() + "/post.json"
        try Data(#"{"title":"Over h2","content":"c","author":"h2"}"#.utf8).write(to: URL(fileURLWithPath: file))

        let create = try await run("nghttp", ["-v", "-H", ":method: POST", "-d", file, node.base + "/blog/posts"])
        #expect(create.status == 0, "nghttp failed (is nghttp2-client installed?): \(create.output)")
        #expect(create.output.contains(":status: 201"))
        #expect(create.output.contains("recv SETTINGS frame"), "the exchange must be HTTP/2")
        let list = try await run("nghttp", [node.base + "/blog/posts"])
        #expect(list.output.contains("Over h2"))
        let id = try #require(try await node.request("GET", "/blog/posts").text.split(separator: "\"").drop { $0 != "id" }.dropFirst(2).first)
        let delete = try await run("nghttp", ["-v", "-H", ":method: DELETE", node.base + "/blog/posts/\(id)"])
        #expect(delete.output.contains(":status: 204"))
        let get = try await run("nghttp", ["-v", node.base + "/blog/posts/\(id)"])
        #expect(get.output.contains(":status: 404"))
        #expect(get.output.contains("skein-trace-id"))
    }
}
