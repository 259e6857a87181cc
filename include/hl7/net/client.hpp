// The client: one host, many connections (one per port), each sending messages and
// matching their acknowledgements, reconnecting with backoff when the link drops.
//
//     auto client = hl7::client::create(ex, {.host = "hl7.example.org"}).value();
//     auto adt = client.connect(5678).value();                  // ADT feed
//     auto oru = client.connect(5679).value();                  // results feed, same host
//     auto ack = co_await adt.send(std::move(msg));             // outcome::result<hl7::ack>
//     if (ack && ack.value().accepted()) { /* AA or CA */ }
//     co_await adt.close();                                     // no reconnect after this
//
// What the library guarantees about each message given to send: it completes exactly once,
// either with the acknowledgement whose MSA-2 equals the message's MSH-10 or with a named
// error; it is written at most once. After ack_timeout or connection_lost the peer may or
// may not have processed the message: the library does not resend it (that could deliver
// it twice); the caller decides, for example by sending it again with the same MSH-10.
#pragma once

#include <hl7/net/host.hpp>
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

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace hl7 {

/// How a connection retries after a failed connection attempt or a lost link.
///
/// After the n-th consecutive failed attempt it waits min(max, initial * factor^(n-1)),
/// spread by +-jitter (a fraction of the delay), then tries again; after max_attempts
/// consecutive failures it gives up (see connection::start). After a link that was up is
/// lost, it waits `initial` (with jitter) before the first new attempt. A successful
/// connection resets the count.
struct reconnect_policy {
    /// Consecutive failed attempts after which the connection gives up; 0 never gives up.
    std::uint32_t max_attempts = 10;
    /// Delay after the first failure, and before reconnecting after a lost link.
    std::chrono::milliseconds initial = std::chrono::milliseconds(200);
    /// Largest delay between attempts.
    std::chrono::milliseconds max = std::chrono::seconds(30);
    /// Growth of the delay from one failure to the next (at least 1).
    double factor = 2.0;
    /// Random spread of each delay, as a fraction of it, in [0, 1]; 0 disables jitter.
    double jitter = 0.2;
};

/// The life of a connection.
enum class connection_state {
    idle,        ///< not started: a lazy connection before its first send
    connecting,  ///< resolving the host and connecting
    connected,   ///< connected; messages flow
    backing_off, ///< waiting before the next attempt
    failed,      ///< gave up after reconnect_policy::max_attempts; start() tries again
    closing,     ///< close() was called; the message in flight is being finished
    closed,      ///< closed for good
};

/// Something that happened on a connection, for logs and metrics (connection_options::observer).
/// Views in it are valid only during the call.
struct connection_event {
    enum class kind {
        connecting,          ///< attempt `attempt` (1-based, consecutive) starts
        connected,           ///< connected to `endpoint`
        disconnected,        ///< the link dropped or was reset; `error` says why
        reconnect_scheduled, ///< attempt `attempt` will start after `delay`
        gave_up,             ///< stopped after `attempt` consecutive failures; `error` is the last one
        sent,                ///< the message `control_id` was written
        acknowledged,        ///< `control_id` got its ACK: MSA-1 `code`, after `round_trip`
        timed_out,           ///< no ACK for `control_id` within the ACK timeout
        discarded,           ///< a frame nobody waited for (a stray or late ACK) was dropped; `error`
                             ///< is set when it was not even a frame (frame_too_large, invalid_frame)
        closed,              ///< the connection is closed for good
    };
    kind what;
    std::uint32_t attempt = 0;
    std::chrono::milliseconds delay{};
    boost::system::error_code error{};
    std::string_view control_id{};
    hl7::ack_code code = hl7::ack_code::AA;
    std::chrono::microseconds round_trip{};
    boost::asio::ip::tcp::endpoint endpoint{};
};

/// Counters of a connection (or, from client::counters, summed over a client's connections).
struct connection_counters {
    std::uint64_t sent = 0;         ///< messages written
    std::uint64_t acknowledged = 0; ///< ACKs with AA or CA
    std::uint64_t rejected = 0;     ///< ACKs with AE, AR, CE or CR
    std::uint64_t timed_out = 0;    ///< messages that got no ACK within the ACK timeout
    std::uint64_t failed = 0;       ///< sends that completed with any other error, cancellation included
    std::uint64_t reconnects = 0;   ///< connections established after the first
    std::uint64_t queued = 0;       ///< messages waiting now (not yet written)
    std::uint64_t discarded = 0;    ///< frames dropped because no message waited for them
};

/// Options of a connection. Every member has a default; a zero duration or limit means
/// "no limit" only where stated.
struct connection_options {
    /// Time allowed for resolving the host and establishing one TCP connection (all
    /// resolved addresses tried in turn). A timeout counts as a failed attempt.
    std::chrono::milliseconds connect_timeout = std::chrono::seconds(10);
    /// Time allowed for the acknowledgement, from the moment the message starts being
    /// written. On expiry the send completes with errc::ack_timeout and the link is reset.
    std::chrono::milliseconds ack_timeout = std::chrono::seconds(30);
    /// Longest time a message may wait in the queue (for a connection, or for its turn)
    /// before being written; errc::queue_timeout after that. 0: no limit.
    std::chrono::milliseconds queue_timeout = std::chrono::seconds(60);
    /// Most messages that may wait at once; one more completes with errc::queue_full.
    std::size_t queue_limit = 1024;
    /// Largest reply frame accepted.
    std::size_t max_frame = mllp::default_max_frame;
    /// Reconnection with backoff.
    reconnect_policy reconnect{};
    /// false: connect at once. true: connect on the first send.
    bool lazy = false;
    /// Transforms each outgoing payload (the message's bytes) before framing, e.g. to
    /// encrypt it. Called on the connection's strand. Empty: sent as is.
    std::function<std::string(std::string_view)> send_hook = {};
    /// Transforms each incoming frame payload before it is parsed as an acknowledgement.
    /// Called on the connection's strand. Empty: parsed as is.
    std::function<std::string(std::string_view)> receive_hook = {};
    /// Told about what happens (see event). Called on the connection's strand; it must not
    /// block. It may call the connection's member functions.
    std::function<void(const connection_event&)> observer = {};
    /// TLS: when set, every connection attempt does a TLS handshake after the TCP connect
    /// (within tls->handshake_timeout); a failed handshake is a failed attempt, named by its
    /// error, and never falls back to plaintext. Empty: plaintext MLLP.
    std::optional<tls_client_options> tls = {};
};

class client;

/// A connection to one port of the client's host.
///
/// One message is in flight at a time (original MLLP mode); concurrent senders are served
/// in FIFO order from a bounded queue. The connection keeps a read outstanding while
/// connected, so a peer that closes or resets is noticed at once. When the link drops or a
/// connection attempt fails it reconnects with exponential backoff and jitter; queued
/// messages wait, bounded by queue_limit and queue_timeout. A message that was written
/// but not acknowledged when the link dropped completes with errc::connection_lost, or with
/// the reason when the link dropped because the server refused our TLS certificate after the
/// handshake (as TLS 1.3 servers do), which also counts as a failed connection attempt.
///
/// The ACK is matched to the message: a reply whose MSA-2 is not the sent MSH-10 completes
/// the send with errc::ack_mismatch and resets the link; a reply that is not a valid ACK
/// completes it with errc::invalid_ack and resets the link. A late or duplicate ACK of an
/// earlier message, or any frame arriving while nothing is in flight, is discarded
/// (event::discarded, counters().discarded) and never answers the next message.
///
/// Thread safety: the object is a handle to state that lives on a strand. All member
/// functions may be called from any thread, concurrently; calls made on the strand itself
/// (from a completion handler or a coroutine running there) take effect at once, others are
/// posted to it. Completion handlers run on their associated executor (by default the
/// connection's strand), never inside the initiating call. Works on single- and
/// multi-threaded io_contexts.
///
/// Lifetime: move-only. Destroying the handle closes the connection (as close() does,
/// without waiting); outstanding sends still complete.
class connection {
public:
    using executor_type = boost::asio::any_io_executor;
    using send_signature = void(boost::system::error_code, hl7::ack);

    connection(connection&&) noexcept;
    connection& operator=(connection&&) noexcept;
    ~connection();

    /// Sends `msg` and waits for its acknowledgement. Completion signature
    /// void(error_code, hl7::ack): on success the matched ACK, whatever its MSA-1 (see
    /// ack::accepted and ack::error); on failure a default-constructed ack and one of
    /// errc::{queue_full, queue_timeout, not_connected, ack_timeout, ack_mismatch,
    /// invalid_ack, connection_lost, frame_too_large, closed, tls_no_client_certificate,
    /// tls_untrusted_certificate, tls_certificate_expired}, or operation_aborted.
    /// `msg` must have an MSH-10: a message without one completes with
    /// errc::missing_control_id, unsent.
    ///
    /// Cancellation (per-operation, via the token's cancellation slot): while the message
    /// is queued, any cancellation type removes it unsent (operation_aborted). Once it is
    /// being written, only terminal cancellation is honoured: the send completes with
    /// operation_aborted at once, and the ACK, when it comes, is still consumed.
    ///
    /// Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_send(message msg, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, send_signature>(
            [i = impl_](auto handler, message m) {
                send_impl(i, std::move(m), boost::asio::any_completion_handler<send_signature>(std::move(handler)));
            },
            token, std::move(msg));
    }

    /// The coroutine form of async_send: the ACK or the error, never an exception.
    boost::asio::awaitable<outcome::result<hl7::ack>> send(message msg);

    /// Closes for good: queued messages complete with errc::closed, the message in flight
    /// gets its ACK or times out, then the socket closes; no reconnect afterwards.
    /// Idempotent: every call completes, with signature void(), once the connection is
    /// closed. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_close(CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, void()>(
            [i = impl_](auto handler) { close_impl(i, boost::asio::any_completion_handler<void()>(std::move(handler))); },
            token);
    }

    /// The coroutine form of async_close.
    boost::asio::awaitable<void> close();

    /// Starts connecting: after the connection gave up (connection_state::failed), or a lazy
    /// connection before its first send. Does nothing in any other state.
    void start();

    /// The state now (it may change right after).
    connection_state state() const noexcept;

    /// Counters so far; exact, readable from any thread.
    connection_counters counters() const noexcept;

    /// The port this connection goes to.
    std::uint16_t port() const noexcept;

    /// The connection's strand.
    executor_type get_executor() const noexcept;

private:
    struct impl;
    friend class client;
    explicit connection(std::shared_ptr<impl> i) noexcept;
    static void send_impl(const std::shared_ptr<impl>& i, message msg,
                          boost::asio::any_completion_handler<send_signature> handler);
    static void close_impl(const std::shared_ptr<impl>& i, boost::asio::any_completion_handler<void()> handler);
    std::shared_ptr<impl> impl_;
};

/// A client's host and the defaults for its connections.
struct client_options {
    /// IPv4 address, IPv6 address (brackets optional) or DNS name; see parse_host.
    std::string host;
    /// Options for connect(port).
    connection_options defaults{};
};

/// One host and its connections.
///
/// Thread safety: all member functions may be called from any thread, concurrently.
/// Lifetime: move-only handle; destroying it does not close its connections (each
/// connection handle owns its connection).
class client {
public:
    using executor_type = boost::asio::any_io_executor;

    /// Checks the host's form (no I/O). Fails with errc::invalid_host.
    static outcome::result<client> create(executor_type ex, client_options options);

    client(client&&) noexcept;
    client& operator=(client&&) noexcept;
    ~client();

    /// A new, independent connection to `port` with the client's default options.
    /// Fails with errc::invalid_port outside 1-65535, or errc::tls_setup_failed when the
    /// TLS files cannot be loaded.
    outcome::result<connection> connect(int port) const;
    /// As above with its own options.
    outcome::result<connection> connect(int port, connection_options options) const;

    /// Closes every connection made by this client (see connection::async_close); completes,
    /// with signature void(), when all are closed. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_close(CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, void()>(
            [s = state_](auto handler) { close_impl(s, boost::asio::any_completion_handler<void()>(std::move(handler))); },
            token);
    }

    /// The coroutine form of async_close.
    boost::asio::awaitable<void> close();

    /// Counters summed over every connection this client made, closed ones included.
    connection_counters counters() const;

    /// The checked host.
    const hl7::host& host() const noexcept;

private:
    struct state;
    explicit client(std::shared_ptr<state> s) noexcept;
    static void close_impl(const std::shared_ptr<state>& s, boost::asio::any_completion_handler<void()> handler);
    std::shared_ptr<state> state_;
};

} // namespace hl7
