import Foundation
import SkeinPipeline

/// Zerver's blog, on the key-value effects: posts and their comments, validation naming the
/// failing field, 201 on create, 204 on delete, 404 on a missing post, and an HTML page.
///
/// Every route is a pipeline of pure steps; all I/O is declared as effects.
public struct BlogApplication: SkeinApplication {
    public init() {}

    /// Adds the blog's routes.
    public func register(_ routes: inout RouterBuilder) {
        routes.add(.get, "/blog", steps: [Steps.listPosts, Steps.renderPage])
        routes.add(.get, "/blog/posts", steps: [Steps.listPosts, Steps.renderPosts])
        routes.add(.post, "/blog/posts", steps: [Steps.createPost])
        routes.add(.get, "/blog/posts/:id", steps: [Steps.parsePostID, Steps.loadPost, Steps.renderPost])
        routes.add(.put, "/blog/posts/:id", steps: [Steps.parsePostID, Steps.loadPost, Steps.replacePost])
        routes.add(.patch, "/blog/posts/:id", steps: [Steps.parsePostID, Steps.loadPost, Steps.patchPost])
        routes.add(.delete, "/blog/posts/:id", steps: [Steps.parsePostID, Steps.loadPost, Steps.deletePost])
        routes.add(.get, "/blog/posts/:id/comments", steps: [Steps.parsePostID, Steps.loadPost, Steps.listComments])
        routes.add(.post, "/blog/posts/:id/comments", steps: [Steps.parsePostID, Steps.loadPost, Steps.createComment])
        routes.add(.delete, "/blog/posts/:id/comments/:commentID", steps: [Steps.parsePostID, Steps.deleteComment])
    }
}

/// The blog's slots: per-request state, each with one type.
public enum BlogSlots {
    public enum PostID: Slot { public typealias Value = String }
    public enum StoredPost: Slot { public typealias Value = Post? }
    public enum PostEntries: Slot { public typealias Value = [KVEntry] }
    public enum CommentEntries: Slot { public typealias Value = [KVEntry] }
    public enum Saved: Slot { public typealias Value = Post }
    public enum SavedComment: Slot { public typealias Value = Comment }
    public enum StoredComment: Slot { public typealias Value = Comment? }
}

/// The blog's steps. Each declares its view of the slots; the compiler holds it to it.
public enum Steps {
    typealias S = BlogSlots

    // MARK: Shared

    struct PostIDView: SlotView { var id = Write<S.PostID>() }

    /// Reads `:id` from the path into the `PostID` slot (400 if it is not a valid id).
    public static let parsePostID = Step("blog.parse_id", view: PostIDView.self) { ctx in
        ctx.put(\.id, try BlogValidation.id(try ctx.request.parameter("id"), field: "id"))
        return .continue
    }

    struct LoadView: SlotView {
        var id = Read<S.PostID>()
        var post = Write<S.StoredPost>()
    }
    struct EnsureView: SlotView { var post = Read<S.StoredPost>() }

    /// 404 unless the post was found; otherwise on to the route's next step.
    static let ensurePost = Step("blog.ensure_post", view: EnsureView.self) { ctx in
        guard try ctx.require(\.post) != nil else {
            return .fail(.notFound("post", key: ctx.request.parameters["id"] ?? "", message: "no post with this id"))
        }
        return .continue
    }

    /// Loads the post named by `PostID` into `StoredPost`, then 404s if it does not exist.
    public static let loadPost = Step("blog.load_post", view: LoadView.self, continuations: [ensurePost]) { ctx in
        .need(ctx.kvGet(BlogKeys.post(try ctx.require(\.id)), decoding: Post.self, into: \.post), then: ensurePost)
    }

    // MARK: Posts

    struct ListView: SlotView { var entries = Write<S.PostEntries>() }

    /// Scans every post into `PostEntries`.
    public static let listPosts = Step("blog.list_posts", view: ListView.self) { ctx in
        .need(ctx.kvScan(prefix: BlogKeys.postPrefix, limit: 1000, into: \.entries))
    }

    struct RenderListView: SlotView { var entries = Read<S.PostEntries>() }

    static func decodePosts(_ entries: [KVEntry]) -> [Post] {
        entries.compactMap { try? JSONDecoder().decode(Post.self, from: $0.value) }
            .sorted { ($0.createdAtMs, $0.id) > ($1.createdAtMs, $1.id) }
    }

    public static let renderPosts = Step("blog.render_posts", view: RenderListView.self) { ctx in
        .done(.json(decodePosts(try ctx.require(\.entries))))
    }

    public static let renderPage = Step("blog.render_page", view: RenderListView.self) { ctx in
        .done(.html(BlogPage.render(decodePosts(try ctx.require(\.entries)))))
    }

    struct SavedView: SlotView { var saved = Read<S.Saved>() }

    static let respondCreated = Step("blog.respond_created", view: SavedView.self) { ctx in
        let post = try ctx.require(\.saved)
        var response = Response.json(post, status: .created)
        response.headers[.location] = "/blog/posts/\(post.id)"
        return .done(response)
    }

    static let respondSaved = Step("blog.respond_saved", view: SavedView.self) { ctx in
        .done(.json(try ctx.require(\.saved)))
    }

    struct CreateView: SlotView { var saved = Write<S.Saved>() }

    /// Validates the body and stores a new post; 201 with the post.
    public static let createPost = Step("blog.create_post", view: CreateView.self, continuations: [respondCreated]) { ctx in
        let fields = try ctx.request.decodeJSON(PostFields.self)
        let now = ctx.request.receivedAtMs
        let post = Post(id: BlogKeys.newID(ctx.request), title: try BlogValidation.title(fields.title),
                        content: try BlogValidation.nonEmpty(fields.content, field: "content"),
                        author: try BlogValidation.nonEmpty(fields.author, field: "author"),
                        createdAtMs: now, updatedAtMs: now)
        ctx.put(\.saved, post)
        return .need(ctx.kvPut(BlogKeys.post(post.id), json: post), then: respondCreated)
    }

    struct RenderPostView: SlotView { var post = Read<S.StoredPost>() }

    public static let renderPost = Step("blog.render_post", view: RenderPostView.self) { ctx in
        guard let post = try ctx.require(\.post) else { return .fail(.notFound("post")) }
        return .done(.json(post))
    }

    struct UpdateView: SlotView {
        var post = Read<S.StoredPost>()
        var saved = Write<S.Saved>()
    }

    /// Replaces every field of an existing post.
    public static let replacePost = Step("blog.replace_post", view: UpdateView.self, continuations: [respondSaved]) { ctx in
        guard var post = try ctx.require(\.post) else { return .fail(.notFound("post")) }
        let fields = try ctx.request.decodeJSON(PostFields.self)
        post.title = try BlogValidation.title(fields.title)
        post.content = try BlogValidation.nonEmpty(fields.content, field: "content")
        post.author = try BlogValidation.nonEmpty(fields.author, field: "author")
        post.updatedAtMs = ctx.request.receivedAtMs
        ctx.put(\.saved, post)
        return .need(ctx.kvPut(BlogKeys.post(post.id), json: post), then: respondSaved)
    }

    /// Changes the fields the body names.
    public static let patchPost = Step("blog.patch_post", view: UpdateView.self, continuations: [respondSaved]) { ctx in
        guard var post = try ctx.require(\.post) else { return .fail(.notFound("post")) }
        let patch = try ctx.request.decodeJSON(PostPatch.self)
        if let title = patch.title { post.title = try BlogValidation.title(title) }
        if let content = patch.content { post.content = try BlogValidation.nonEmpty(content, field: "content") }
        if let author = patch.author { post.author = try BlogValidation.nonEmpty(author, field: "author") }
        post.updatedAtMs = ctx.request.receivedAtMs
        ctx.put(\.saved, post)
        return .need(ctx.kvPut(BlogKeys.post(post.id), json: post), then: respondSaved)
    }

    struct DeleteView: SlotView {
        var id = Read<S.PostID>()
        var comments = Write<S.CommentEntries>()
    }
    struct DeleteAllView: SlotView {
        var id = Read<S.PostID>()
        var comments = Read<S.CommentEntries>()
    }

    static let respondNoContent = Step("blog.respond_no_content") { _ in .done(.noContent) }

    /// Deletes the post and its comments together, in parallel.
    static let deleteAll = Step("blog.delete_all", view: DeleteAllView.self, continuations: [respondNoContent]) { ctx in
        let id = try ctx.require(\.id)
        let effects = [ctx.kvDelete(BlogKeys.post(id))] + (try ctx.require(\.comments)).map { ctx.kvDelete($0.key) }
        return .need(effects, mode: .parallel, join: .all, then: respondNoContent)
    }

    /// Finds the post's comments, then (a continuation that itself needs effects) deletes everything.
    public static let deletePost = Step("blog.delete_post", view: DeleteView.self, continuations: [deleteAll]) { ctx in
        .need(ctx.kvScan(prefix: BlogKeys.comments(try ctx.require(\.id)), limit: 10_000, into: \.comments), then: deleteAll)
    }

    // MARK: Comments

    struct CommentsView: SlotView {
        var id = Read<S.PostID>()
        var comments = Write<S.CommentEntries>()
    }
    struct RenderCommentsView: SlotView { var comments = Read<S.CommentEntries>() }

    static let renderComments = Step("blog.render_comments", view: RenderCommentsView.self) { ctx in
        let comments = try ctx.require(\.comments).compactMap { try? JSONDecoder().decode(Comment.self, from: $0.value) }
            .sorted { ($0.createdAtMs, $0.id) < ($1.createdAtMs, $1.id) }
        return .done(.json(comments))
    }

    public static let listComments = Step("blog.list_comments", view: CommentsView.self, continuations: [renderComments]) { ctx in
        .need(ctx.kvScan(prefix: BlogKeys.comments(try ctx.require(\.id)), into: \.comments), then: renderComments)
    }

    struct CreateCommentView: SlotView {
        var id = Read<S.PostID>()
        var saved = Write<S.SavedComment>()
    }
    struct SavedCommentView: SlotView { var saved = Read<S.SavedComment>() }

    static let respondCommentCreated = Step("blog.respond_comment_created", view: SavedCommentView.self) { ctx in
        let comment = try ctx.require(\.saved)
        var response = Response.json(comment, status: .created)
        response.headers[.location] = "/blog/posts/\(comment.postID)/comments/\(comment.id)"
        return .done(response)
    }

    public static let createComment = Step("blog.create_comment", view: CreateCommentView.self, continuations: [respondCommentCreated]) { ctx in
        let postID = try ctx.require(\.id)
        let fields = try ctx.request.decodeJSON(CommentFields.self)
        let comment = Comment(id: BlogKeys.newID(ctx.request), postID: postID,
                              author: try BlogValidation.nonEmpty(fields.author, field: "author"),
                              content: try BlogValidation.nonEmpty(fields.content, field: "content"),
                              createdAtMs: ctx.request.receivedAtMs)
        ctx.put(\.saved, comment)
        return .need(ctx.kvPut(BlogKeys.comment(postID, comment.id), json: comment), then: respondCommentCreated)
    }

    struct DeleteCommentView: SlotView {
        var id = Read<S.PostID>()
        var comment = Write<S.StoredComment>()
    }
    struct RemoveCommentView: SlotView {
        var id = Read<S.PostID>()
        var comment = Read<S.StoredComment>()
    }

    static let removeComment = Step("blog.remove_comment", view: RemoveCommentView.self, continuations: [respondNoContent]) { ctx in
        guard let comment = try ctx.require(\.comment) else {
            return .fail(.notFound("comment", key: ctx.request.parameters["commentID"] ?? "", message: "no such comment on this post"))
        }
        return .need(ctx.kvDelete(BlogKeys.comment(try ctx.require(\.id), comment.id)), then: respondNoContent)
    }

    public static let deleteComment = Step("blog.delete_comment", view: DeleteCommentView.self, continuations: [removeComment]) { ctx in
        let commentID = try BlogValidation.id(try ctx.request.parameter("commentID"), field: "commentID")
        return .need(ctx.kvGet(BlogKeys.comment(try ctx.require(\.id), commentID), decoding: Comment.self, into: \.comment),
                     then: removeComment)
    }
}
