import HummingbirdCore
import HummingbirdHTTP2
import Logging
import NIOCore
import NIOHTTP2
import NIOTLS

/// Serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.
///
/// Hummingbird's `plaintextHTTP2` refuses HTTP/1.1, and its upgrade channel needs TLS to pick a
/// protocol. Here a small handler reads the first bytes of a connection: if they are the HTTP/2
/// connection preface the connection is configured for HTTP/2, otherwise for HTTP/1.1. It
/// reports the choice as the ALPN result a TLS handler would, so NIO's typed negotiation handler
/// (which buffers the bytes read meanwhile) configures the pipeline exactly as for TLS.
struct DualProtocolChannel: ServerChildChannel {
    typealias Negotiated = NIONegotiatedHTTPVersion<HTTP1Channel.Value, HTTP2Channel.Value>

    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<Negotiated>
        let channel: any Channel
    }

    let http1: HTTP1Channel
    let http2: HTTP2Channel

    /// `handlers` makes the handlers that go between the HTTP codec and Hummingbird's request
    /// handling, on each HTTP/1.1 connection (`http2Stream` false) and each HTTP/2 stream (true).
    init(responder: @escaping HTTPChannelHandler.Responder, configuration: HTTP2ChannelConfiguration,
         handlers: @escaping @Sendable (_ http2Stream: Bool) -> [any RemovableChannelHandler] = { _ in [] }) {
        var configuration = configuration
        var http1Configuration = configuration.streamConfiguration
        http1Configuration.additionalChannelHandlers = { handlers(false) }
        configuration.streamConfiguration.additionalChannelHandlers = { handlers(true) }
        self.http1 = HTTP1Channel(responder: responder, configuration: http1Configuration)
        self.http2 = HTTP2Channel(responder: responder, configuration: configuration)
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let http1 = self.http1
            let http2 = self.http2
            let negotiation = NIOTypedApplicationProtocolNegotiationHandler<Negotiated> { result in
                switch result {
                case .negotiated("h2"):
                    return http2.setup(channel: channel, logger: logger).map { .http2($0) }
                default:
                    return http1.setup(channel: channel, logger: logger).map { .http1_1($0) }
                }
            }
            try channel.pipeline.syncOperations.addHandler(HTTP2PrefaceSniffer())
            try channel.pipeline.syncOperations.addHandler(negotiation)
            return Value(negotiated: negotiation.protocolNegotiationResult, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.negotiated.get() {
            case .http1_1(let connection):
                await http1.handle(value: connection, logger: logger)
            case .http2(let connection):
                await http2.handle(value: connection, logger: logger)
            }
        } catch {
            logger.debug("connection closed before its protocol was known: \(error)")
        }
    }
}

/// Reads just enough of a connection to tell the HTTP/2 preface from an HTTP/1.1 request line.
final class HTTP2PrefaceSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    private var buffered: ByteBuffer?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if buffered == nil {
            buffered = incoming
        } else {
            buffered!.writeBuffer(&incoming)
        }
        let bytes = buffered!.readableBytesView
        let compared = min(bytes.count, Self.preface.count)
        let matches = bytes.prefix(compared).elementsEqual(Self.preface.prefix(compared))
        guard !matches || compared == Self.preface.count else { return }  // need more bytes
        let chosen = matches ? "h2" : "http/1.1"
        context.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: chosen))
        context.fireChannelRead(wrapInboundOut(buffered!))
        buffered = nil
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Before the protocol is known there is nothing to finish: a peer that half-closes, or a
    /// server shutting down, simply closes the connection (else graceful shutdown would wait on
    /// a connection that never spoke).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed, is ChannelShouldQuiesceEvent:
            context.close(promise: nil)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }
}
