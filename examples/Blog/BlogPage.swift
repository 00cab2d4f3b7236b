import Foundation

/// The HTML page at `GET /blog`: every post, newest first.
enum BlogPage {
    static func render(_ posts: [Post]) -> String {
        var html = """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>Skein blog</title>
            <style>body{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}
            article{border-bottom:1px solid #ddd;padding:.5rem 0}small{color:#666}</style></head>
            <body><h1>Skein blog</h1>

            """
        if posts.isEmpty { html += "<p>No posts yet. <code>POST /blog/posts</code> makes one.</p>\n" }
        for post in posts {
            html += "<article><h2>\(escape(post.title))</h2><small>by \(escape(post.author)) · <a href=\"/blog/posts/\(escape(post.id))\">\(escape(post.id))</a></small><p>\(escape(post.content))</p></article>\n"
        }
        return html + "</body></html>\n"
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for c in text {
            switch c {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }
}
