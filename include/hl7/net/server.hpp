// An MLLP listener: accepts connections, decodes frames, hands each message to a handler
// and writes the handler's reply back, in order, on the same connection.
//
// What arrives that is not a message never ends a connection:
//   - a frame larger than server_options::max_frame, or cut short by a new start block, is
//     dropped (server_event::bad_frame);
//   - bytes outside frames are skipped;
//   - a frame that does not parse (hl7::message::parse fails) is answered with an AE (CE in
//     enhanced mode) when its MSH segment can still be read as far as MSH-10: MSA-2 is that
//     MSH-10, MSA-3 the parse error, ERR-3 HL7 error 100. Otherwise it is dropped. Either way
//     it is reported as server_event::unparsable.
#pragma once

#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>
#include <hl7/model/mllp.hpp>
#include <hl7/net/tls.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace hl7 {

/// Turns a received message into the reply to send back, typically
/// `co_return hl7::make_ack(m, hl7::verdict::accept);`. Runs on the connection's strand,
/// one message at a time per connection (so replies go out in the order messages came in);
/// connections are served concurrently, so a handler shared by them must be safe to call
/// concurrently. A reply of errc::no_ack_requested sends nothing (the message's MSH-15/16
/// asked for no acknowledgement); any other error, or an exception thrown by the handler, is
/// answered with an AE acknowledgement (HL7 error 207) and reported to the observer.
/// The message stays alive, unchanged, until the handler's coroutine has finished; copy it
/// to keep it longer.
using server_handler = std::function<boost::asio::awaitable<outcome::result<message>>(const message&)>;

/// Something the server noticed, for logging. Passed to server_options::observer.
/// `control_id` and `detail` are valid only during the observer call.
struct server_event {
    enum class kind {
        accepted,      ///< a connection was accepted from `peer`
        received,      ///< a message arrived from `peer`; `control_id` is its MSH-10
        replied,       ///< the reply to `control_id` was written
        bad_frame,     ///< a frame was dropped: `error` is frame_too_large or invalid_frame
        unparsable,    ///< a frame did not parse (`error`); answered with AE when its MSH-10
                       ///< could be read (`control_id` not empty), otherwise dropped
        handler_error, ///< the handler threw; `detail` is its what(); answered with AE
        disconnected,  ///< the connection from `peer` ended; `error` says why: eof when the peer
                       ///< closed, errc::closed when the server was stopped
        handshake_failed, ///< the TLS handshake with `peer` failed: `error` names why
                          ///< (errc::tls_no_client_certificate, tls_plaintext_peer...)
    };
    kind what = kind::accepted;
    boost::asio::ip::tcp::endpoint peer = {};
    std::string_view control_id = {};
    boost::system::error_code error = {};
    std::string_view detail = {};
};

/// Counters of a server, exact under concurrency; read them any time, from any thread.
struct server_counters {
    std::uint64_t connections = 0; ///< connections accepted
    std::uint64_t received = 0;    ///< messages received (parsed or not)
    std::uint64_t replied = 0;     ///< replies written
    std::uint64_t errors = 0;      ///< bad frames, unparsable messages and handler errors
};

/// Where and how a server listens.
struct server_options {
    /// Address to bind: an IPv4 or IPv6 literal ("127.0.0.1", "::1", "0.0.0.0", "::"). An IPv6
    /// address listens for IPv6 only: "::" does not take IPv4 connections.
    std::string host = "127.0.0.1";
    /// Port to bind; 0 picks a free one (see server::local_endpoint()).
    std::uint16_t port = 0;
    /// Largest frame accepted; a larger one is dropped and reported.
    std::size_t max_frame = mllp::default_max_frame;
    /// Makes the reply to each message. Empty: reply with make_ack(message, verdict::accept).
    server_handler handler = {};
    /// Told about connections, messages and errors; called on a connection's strand, so it
    /// must not block, and concurrently for different connections. An exception it throws
    /// ends that connection. Empty: nothing is reported.
    std::function<void(const server_event&)> observer = {};
    /// TLS: when set, every connection starts with a TLS handshake (within
    /// tls->handshake_timeout) and is dropped, reported as handshake_failed, when it fails.
    /// Empty: plaintext MLLP.
    std::optional<tls_server_options> tls = {};
    /// How long async_close lets connections finish the message in hand (a handler still
    /// running, a reply the peer is slow to read). After it their sockets are closed, so that
    /// a peer that stops reading cannot hold the stop up; a reply not yet written is lost
    /// (the peer times out and resends, as after any broken connection).
    std::chrono::milliseconds close_timeout = std::chrono::seconds(10);
};

/// An MLLP server.
///
/// Thread safety: the server may run on a multi-threaded io_context; each connection is
/// served on its own strand and the acceptor on another. The member functions may be
/// called from any thread.
///
/// Lifetime: the object is a handle. Destroying it (or assigning over it) stops the server
/// as async_close() does, without waiting; the background work it started keeps what it needs
/// alive until done. The executor's execution context must outlive that work, as usual in
/// Asio. A moved-from server may only be assigned to or destroyed.
class server {
public:
    using executor_type = boost::asio::any_io_executor;

    /// Binds `options.host:options.port` and starts accepting. Fails with the bind error
    /// (address in use, address not available...), errc::invalid_host when host is not
    /// an IP address literal, or errc::tls_setup_failed when the TLS files cannot be loaded.
    static outcome::result<server> create(executor_type ex, server_options options);

    server(server&&) noexcept;
    server& operator=(server&&) noexcept;
    ~server();

    /// The bound address and port (the real port when 0 was asked for).
    boost::asio::ip::tcp::endpoint local_endpoint() const;

    /// Counters so far.
    server_counters counters() const noexcept;

    /// Stops gracefully: accepts no more connections; a connection that is waiting for a
    /// message is closed at once, one whose handler is running finishes it and writes the
    /// reply first (frames it has already read behind that message are dropped unanswered),
    /// within server_options::close_timeout, after which its socket is closed. Completes, with
    /// signature void(), once every connection is closed and every handler has returned; never inside this
    /// call, but through the handler's associated executor (by default the server's). Calling
    /// it again is harmless; every call completes. Not cancellable. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_close(CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, void()>(
            [i = impl_](auto handler) { close_impl(i, boost::asio::any_completion_handler<void()>(std::move(handler))); },
            token);
    }

    /// The executor the server was created with.
    executor_type get_executor() const noexcept;

    struct impl;

private:
    explicit server(std::shared_ptr<impl> i) noexcept;
    static void close_impl(const std::shared_ptr<impl>& i, boost::asio::any_completion_handler<void()> handler);
    std::shared_ptr<impl> impl_;
};

} // namespace hl7
