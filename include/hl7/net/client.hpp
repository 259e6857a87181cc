// The client: one host, many connections (one per port), each sending messages and
// matching their acknowledgements, reconnecting with backoff when the link drops.
//
//     auto ex = co_await asio::this_coro::executor;               // named first (GCC 12, below)
//     auto client = hl7::client::create(ex, {.host = "hl7.example.org"}).value();
//     auto adt = client.connect(5678).value();                    // ADT feed
//     auto oru = client.connect(5679).value();                    // results feed, same host
//     auto ack = co_await adt.send(std::move(msg));               // outcome::result<hl7::ack>
//     if (ack && ack.value().accepted()) { /* AA or CA */ }
//     co_await adt.close();                                       // no reconnect after this
//
// GCC 12 (Debian 12's compiler) miscompiles a class temporary that lives across a co_await in
// the same full expression: it may be destroyed twice. The natural
// `hl7::client::create(co_await asio::this_coro::executor, {.host = ...})` crashes so: the
// braced client_options is such a temporary. Name the awaited value first, as above (or name
// the options), so that no full expression both suspends and builds a temporary; likewise
// `while (co_await f())` may crash, and is better written with a named result.
//
// What the library guarantees about each message given to send:
//   - It completes exactly once: with the acknowledgement whose MSA-2 equals the message's
//     MSH-10, or with a named error. A late, repeated or unknown ACK never answers another
//     message.
//   - It is written at most once: the library never resends a message by itself.
//   - It never completes with an ACK before its whole frame was written: an ACK read while the
//     write is still going on is held until the write completes, and the send fails with
//     errc::connection_lost if the write then fails (errc::ack_timeout if it never completes).
//   - Between the start of its write and its ACK, it is in the ambiguous window: if the send
//     fails there (hl7::in_doubt(ec) is true: ack_timeout, connection_lost, ack_mismatch,
//     invalid_ack, frame_too_large), the peer may or may not have processed it. The one
//     exception is errc::hook_failed from a receive hook that threw: the message was written
//     and its reply could not be read, yet in_doubt() says false, since the same code names a
//     send hook's failure before anything was written. Every other failure happens before the
//     message reaches the wire, and sending it again is safe. For a message in doubt the
//     caller decides: send it again with the same MSH-10 if the peer deduplicates by MSH-10,
//     or leave the decision to a durable outbox.
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
#include <type_traits>

namespace hl7 {

/// How a connection retries after a failed connection attempt or a lost link.
///
/// After the n-th consecutive failed attempt it waits min(max, initial * factor^(n-1)),
/// spread by +-jitter (a fraction of the delay) and never more than max nor less than 0,
/// then tries again; after max_attempts consecutive failures it gives up (see
/// connection::start). After a link that was up is lost, it waits `initial` (with jitter)
/// before the first new attempt, except when the peer closed an idle link cleanly (end of
/// stream, no message in flight) that had been up for at least `initial`: then it reconnects
/// at once. A successful connection resets the count.
struct reconnect_policy {
    /// Consecutive failed attempts after which the connection gives up; 0 never gives up.
    std::uint32_t max_attempts = 10;
    /// Delay after the first failure, and before reconnecting after a lost link.
    std::chrono::milliseconds initial = std::chrono::milliseconds(200);
    /// Largest delay between attempts, jitter included (taken as at most one year).
    std::chrono::milliseconds max = std::chrono::seconds(30);
    /// Growth of the delay from one failure to the next (at least 1).
    double factor = 2.0;
    /// Random spread of each delay, as a fraction of it, in [0, 1]; 0 disables jitter.
    double jitter = 0.2;
};

/// The life of a connection.
enum class connection_state {
    idle,        ///< not started: a lazy connection before its first send
    connecting,  ///< resolving the host, connecting, and the TLS handshake if any
    connected,   ///< connected; messages flow
    backing_off, ///< waiting before the next attempt
    failed,      ///< gave up after reconnect_policy::max_attempts; start() tries again
    closing,     ///< close() was called; the messages in flight are being finished
    closed,      ///< closed for good
};

/// "idle", "connecting", "connected", "backing_off", "failed", "closing" or "closed".
std::string_view to_string(connection_state s) noexcept;

/// Something that happened on a connection, for logs and metrics (connection_options::observer).
/// Views in it are valid only during the call.
struct connection_event {
    enum class kind {
        connecting,          ///< attempt `attempt` (1-based, consecutive) starts
        connected,           ///< connected to `endpoint`
        disconnected,        ///< the link dropped or was reset; `error` says why: asio::error::eof when
                             ///< the peer closed it (a message written as it did so fails with
                             ///< connection_lost), connection_reset, ack_timeout, ack_mismatch...
        reconnect_scheduled, ///< attempt `attempt` will start after `delay` (0: at once); `error` is why
        gave_up,             ///< stopped after `attempt` consecutive failures; `error` is the last one
        sent,                ///< the message `control_id` was written
        acknowledged,        ///< `control_id` got its ACK: MSA-1 `code`, after `round_trip`
        timed_out,           ///< no ACK for `control_id` within the ACK timeout
        discarded,           ///< a frame nobody waited for (a stray, late or repeated ACK) was dropped;
                             ///< `error` is set when it was not even a frame (frame_too_large,
                             ///< invalid_frame) or the receive hook threw on it (hook_failed)
        closed,              ///< the connection is closed for good
    };
    kind what;                                ///< what happened; the members below are set as it says
    std::uint32_t attempt = 0;                ///< connecting, reconnect_scheduled, gave_up
    std::chrono::milliseconds delay{};        ///< reconnect_scheduled
    boost::system::error_code error{};        ///< disconnected, reconnect_scheduled, gave_up, discarded
    std::string_view control_id{};            ///< sent, acknowledged, timed_out: the message's MSH-10
    hl7::ack_code code = hl7::ack_code::AA;   ///< acknowledged: MSA-1
    std::chrono::microseconds round_trip{};   ///< acknowledged: from the start of the write to the ACK
    boost::asio::ip::tcp::endpoint endpoint{}; ///< connected: the peer's address
};

/// The name of an event kind, as spelled in connection_event::kind ("connecting", "gave_up"...).
std::string_view to_string(connection_event::kind k) noexcept;

/// Counters of a connection (or, from client::counters, summed over a client's connections).
/// Each send that completes is counted once, in exactly one of acknowledged, rejected,
/// timed_out and failed.
struct connection_counters {
    std::uint64_t sent = 0;         ///< messages written (whole frames)
    std::uint64_t acknowledged = 0; ///< sends answered with AA or CA
    std::uint64_t rejected = 0;     ///< sends answered with AE, AR, CE or CR
    std::uint64_t timed_out = 0;    ///< sends that got no ACK within the ACK timeout
    std::uint64_t failed = 0;       ///< sends that completed with any other error, cancellation included
                                    ///< (a message abandoned in flight counts here only)
    std::uint64_t reconnects = 0;   ///< connections established after the first
    std::uint64_t queued = 0;       ///< messages waiting now (not yet written)
    std::uint64_t discarded = 0;    ///< frames dropped because no message waited for them
};

/// Why a connection last failed to connect or lost its link (connection::diagnostics): what
/// a caller whose send failed with errc::not_connected wants to know.
struct connection_diagnostics {
    /// The error of the last failed connection attempt (connection_refused, connect_timeout,
    /// resolve_failed, a TLS failure such as tls_untrusted_certificate...) or of the last link
    /// lost (eof, connection_reset, ack_timeout...); clear when neither happened yet.
    boost::system::error_code last_error{};
    /// Consecutive failed attempts at that moment: reconnect_policy::max_attempts when the
    /// connection gave up; 0 for a link lost after it was up.
    std::uint32_t failed_attempts = 0;
    /// When it happened.
    std::chrono::steady_clock::time_point at{};
};

/// How close() treats the messages in flight (queued ones fail with errc::closed either way).
enum class close_mode {
    graceful,  ///< wait for their ACKs (each within the ACK timeout), then close the socket
    immediate, ///< fail them at once with errc::connection_lost (in doubt) and close the socket
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
    /// Most messages written and not yet acknowledged at once. 1 (the default) is original
    /// MLLP mode: each message waits for the previous one's ACK. Above 1, messages are still
    /// written one at a time, in queue order, and each ACK is matched by its MSA-2 to its own
    /// message in whatever order it comes; a message whose MSH-10 is already in flight waits
    /// for that one to finish. The peer must accept several messages before answering the
    /// first. 0 is taken as 1.
    std::size_t max_in_flight = 1;
    /// Largest outgoing payload (after the send hook); a larger message completes with
    /// errc::message_too_large, unsent. Default: 16 MiB, the default max_frame of a peer.
    std::size_t max_message = mllp::default_max_frame;
    /// Largest reply frame accepted.
    std::size_t max_frame = mllp::default_max_frame;
    /// Reconnection with backoff.
    reconnect_policy reconnect{};
    /// false: connect at once. true: connect on the first send.
    bool lazy = false;
    /// Transforms each outgoing payload (the message's bytes) before framing, e.g. to
    /// encrypt it. Called on the connection's strand; it must not call the connection. If it
    /// throws, that send completes with errc::hook_failed, unsent. Empty: sent as is.
    std::function<std::string(std::string_view)> send_hook = {};
    /// Transforms each incoming frame payload before it is parsed as an acknowledgement.
    /// Called on the connection's strand for every frame; it must not call the connection.
    /// If it throws, the reply cannot be read: the oldest message in flight completes with
    /// errc::hook_failed (it was written, so it is in doubt, although hl7::in_doubt cannot
    /// tell this hook_failed from the send hook's), the others in flight with
    /// connection_lost, and the link is reset; a frame that came while nothing was in flight
    /// is discarded. Empty: parsed as is.
    std::function<std::string(std::string_view)> receive_hook = {};
    /// Told about what happens (see connection_event). Called on the connection's strand; it
    /// must not block. It may call the connection's member functions. An exception it throws
    /// is caught and ignored.
    std::function<void(const connection_event&)> observer = {};
    /// TLS: when set, every connection attempt does a TLS handshake after the TCP connect
    /// (within tls->handshake_timeout); a failed handshake is a failed attempt, named by its
    /// error, and never falls back to plaintext. Empty: plaintext MLLP.
    std::optional<tls_client_options> tls = {};
};

class client;

/// A connection to one port of the client's host.
///
/// Messages are written one at a time, in the order they were sent (FIFO from a bounded
/// queue); by default one is in flight at a time (original MLLP mode), up to
/// connection_options::max_in_flight otherwise. The connection keeps a read outstanding
/// while connected, so a peer that closes or resets is noticed at once. When the link drops
/// or a connection attempt fails it reconnects with exponential backoff and jitter; queued
/// messages wait, bounded by queue_limit and queue_timeout, and go out after reconnecting.
///
/// The ACK is matched to its message by MSA-2 = MSH-10. A late or repeated ACK of a message
/// that finished lately, or any frame arriving while nothing is in flight, is discarded
/// (connection_event::kind::discarded, counters().discarded) and never answers another
/// message. When something goes wrong with the messages in flight, every one of them
/// completes with its own error, each of them in doubt (hl7::in_doubt), and the link is
/// reset: on an ACK timeout, the timed-out ones with errc::ack_timeout; on a reply whose
/// MSA-2 is no message's in flight, the oldest with errc::ack_mismatch; on a reply that is
/// not a valid ACK, the oldest with errc::invalid_ack; on a reply larger than max_frame, the
/// oldest with errc::frame_too_large; and, in each case, the others with
/// errc::connection_lost. A lost link fails them all with errc::connection_lost, or with the
/// reason when the server refused our TLS certificate after the handshake (as TLS 1.3 servers
/// do), which also counts as a failed connection attempt; those are not in doubt, since the
/// server refused the connection before reading what came on it.
///
/// User code called by the connection: the hooks and the observer run on the strand (see
/// connection_options for what their exceptions do). A completion handler that throws
/// when run inline does not keep any other send from completing: the connection finishes
/// what it was doing, then rethrows the first such exception from a function posted to its
/// strand, so that it leaves io_context::run() as Asio users expect.
///
/// Thread safety: the object is a handle to state that lives on a strand. All member
/// functions may be called from any thread, concurrently; calls made on the strand itself
/// (from a completion handler or a coroutine running there) take effect at once, others are
/// posted to it. Completion handlers run on their associated executor (by default the
/// connection's strand), never inside the initiating call. Works on single- and
/// multi-threaded io_contexts.
///
/// Lifetime: move-only. Destroying the handle (or assigning another to it) closes the
/// connection gracefully, as async_close() does, without waiting; outstanding sends still
/// complete, and the state lives on until they have.
class connection {
public:
    using executor_type = boost::asio::any_io_executor;
    using send_signature = void(boost::system::error_code, hl7::ack);

    /// Takes over `other`'s connection; `other` is left empty (only destruction and assignment
    /// are allowed on it).
    connection(connection&& other) noexcept;
    /// Closes this handle's connection gracefully (without waiting), then takes over `other`'s.
    connection& operator=(connection&& other) noexcept;
    /// Closes the connection gracefully, without waiting (see Lifetime above).
    ~connection();

    /// Sends `msg` and waits for its acknowledgement.
    ///
    /// Completion signature void(error_code, hl7::ack): on success the matched ACK, whatever
    /// its MSA-1 (see ack::accepted and ack::error); on failure a default-constructed ack
    /// and one of
    ///   - before the message is written (safe to send again): errc::missing_control_id (no
    ///     MSH-10), errc::hook_failed (the send hook threw), errc::block_byte_in_message (the
    ///     payload holds 0x0B or 0x1C, which would cut its frame short), errc::message_too_large
    ///     (larger than max_message), errc::queue_full, errc::queue_timeout,
    ///     errc::not_connected (the connection gave up: diagnostics() says why), errc::closed,
    ///     operation_aborted (cancelled while queued);
    ///   - after it started being written (in doubt, see hl7::in_doubt): errc::ack_timeout,
    ///     errc::connection_lost, errc::ack_mismatch, errc::invalid_ack,
    ///     errc::frame_too_large, errc::hook_failed (the receive hook threw), operation_aborted
    ///     (abandoned by terminal cancellation: the caller takes the doubt upon itself);
    ///   - errc::tls_no_client_certificate, tls_untrusted_certificate or tls_certificate_expired:
    ///     the server refused our certificate after the handshake, before reading the message.
    ///
    /// Cancellation (per-operation, via the token's cancellation slot): while the message
    /// is queued, any cancellation type removes it unsent (operation_aborted). Once it is
    /// being written, only terminal cancellation is honoured: the send completes with
    /// operation_aborted at once, and the ACK, when it comes, is still consumed (the message
    /// keeps its place among those in flight until then).
    ///
    /// Executor: the handler runs on its associated executor (default: the connection's
    /// strand), never inside this call. Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_send(message msg, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, send_signature>(
            [i = impl_](auto handler, message m) {
                send_impl(i, std::move(m), boost::asio::any_completion_handler<send_signature>(std::move(handler)));
            },
            token, std::move(msg));
    }

    /// The coroutine form of async_send: the ACK or the error, never an exception. It takes
    /// the awaiting coroutine's cancellation slot and resumes on its executor.
    boost::asio::awaitable<outcome::result<hl7::ack>> send(message msg);

    /// Closes for good; no reconnect afterwards. Queued messages complete with errc::closed.
    /// close_mode::graceful (the default): the messages in flight get their ACKs or time out
    /// (messages abandoned by terminal cancellation are not waited for), then the socket
    /// closes. close_mode::immediate: they complete with errc::connection_lost and the socket
    /// closes at once; it also cuts short a graceful close in progress. Sends made afterwards
    /// complete with errc::closed.
    ///
    /// Completion signature void(), once the connection is closed. Idempotent: every call
    /// completes. Cancellation: none. Executor: the handler's associated executor (default:
    /// the strand). Default token: deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_close(close_mode mode, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, void()>(
            [i = impl_, mode](auto handler) {
                close_impl(i, mode, boost::asio::any_completion_handler<void()>(std::move(handler)));
            },
            token);
    }
    /// async_close(close_mode::graceful, token).
    template <class CompletionToken = boost::asio::deferred_t>
        requires(!std::is_same_v<std::decay_t<CompletionToken>, close_mode>)
    auto async_close(CompletionToken&& token = {})
    {
        return async_close(close_mode::graceful, std::forward<CompletionToken>(token));
    }

    /// The coroutine form of async_close.
    boost::asio::awaitable<void> close(close_mode mode = close_mode::graceful);

    /// Starts connecting: after the connection gave up (connection_state::failed), or a lazy
    /// connection before its first send. Does nothing in any other state. Returns at once;
    /// the connection happens on the strand.
    void start();

    /// The state now (it may change right after). Thread-safe.
    connection_state state() const noexcept;

    /// Counters so far; exact, readable from any thread.
    connection_counters counters() const noexcept;

    /// Why the last connection attempt failed or the last link was lost, with the count of
    /// consecutive failed attempts and when: after a send failed with errc::not_connected, the
    /// reason the connection gave up. Thread-safe.
    connection_diagnostics diagnostics() const;

    /// The address of the peer while connected (also while closing); empty otherwise.
    /// Thread-safe.
    std::optional<boost::asio::ip::tcp::endpoint> remote_endpoint() const;

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
    static void close_impl(const std::shared_ptr<impl>& i, close_mode mode,
                           boost::asio::any_completion_handler<void()> handler);
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

    /// Checks the host's form (no I/O). Fails with errc::invalid_host. In a coroutine, name
    /// the executor before the call (`auto ex = co_await asio::this_coro::executor;`): a
    /// braced options argument in the same full expression as a co_await is destroyed twice
    /// by GCC 12 (see the top of this header).
    static outcome::result<client> create(executor_type ex, client_options options);

    /// Takes over `other`'s host and connections list; `other` is left empty.
    client(client&& other) noexcept;
    client& operator=(client&& other) noexcept;
    /// Leaves the connections open: each connection handle owns its connection.
    ~client();

    /// A new, independent connection to `port` with the client's default options.
    /// Fails with errc::invalid_port outside 1-65535, or errc::tls_setup_failed when the
    /// TLS files cannot be loaded.
    outcome::result<connection> connect(int port) const;
    /// As above with its own options.
    outcome::result<connection> connect(int port, connection_options options) const;

    /// Closes every connection made by this client, as connection::async_close(mode) does;
    /// completes, with signature void(), when all are closed. Cancellation: none. Executor:
    /// the handler's associated executor (default: the client's executor). Default token:
    /// deferred.
    template <class CompletionToken = boost::asio::deferred_t>
    auto async_close(close_mode mode, CompletionToken&& token = {})
    {
        return boost::asio::async_initiate<CompletionToken, void()>(
            [s = state_, mode](auto handler) {
                close_impl(s, mode, boost::asio::any_completion_handler<void()>(std::move(handler)));
            },
            token);
    }
    /// async_close(close_mode::graceful, token).
    template <class CompletionToken = boost::asio::deferred_t>
        requires(!std::is_same_v<std::decay_t<CompletionToken>, close_mode>)
    auto async_close(CompletionToken&& token = {})
    {
        return async_close(close_mode::graceful, std::forward<CompletionToken>(token));
    }

    /// The coroutine form of async_close.
    boost::asio::awaitable<void> close(close_mode mode = close_mode::graceful);

    /// Counters summed over every connection this client made, closed ones included.
    connection_counters counters() const;

    /// The checked host.
    const hl7::host& host() const noexcept;

private:
    struct state;
    explicit client(std::shared_ptr<state> s) noexcept;
    static void close_impl(const std::shared_ptr<state>& s, close_mode mode,
                           boost::asio::any_completion_handler<void()> handler);
    std::shared_ptr<state> state_;
};

} // namespace hl7
