// Steps name methods, statuses and header fields with swift-http-types; users get them with `import SkeinPipeline`.
@_exported public import HTTPTypes
