// An MLLP listener: accepts connections, decodes frames, hands each message to a handler
// and writes the handler's reply back, in order, on the same connection.
//
// What arrives that is not a message never crashes the server, never makes it hold more memory
// than its limits allow, and is never lost silently:
//   - a frame larger than server_options::max_frame, or cut short by a new start block, is
//     dropped (server_event::bad_frame);
//   - bytes outside frames are skipped;
//   - a frame that does not parse (hl7::message::parse fails) is answered with an AE (CE in
//     enhanced mode) when its MSH segment can still be read as far as MSH-10: MSA-2 is that
//     MSH-10, MSA-3 the parse error, ERR-3 HL7 error 100. Otherwise it is dropped. Either way
//     it is reported as server_event::unparsable;
//   - a frame with more segments or fields than server_options::max_segments or max_fields
//     is not parsed: it is answered with an AR (CR) carrying HL7 error 207 when its header
//     can be read, otherwise dropped, and reported as server_event::limit_reached;
//   - an acknowledgement (MSH-9.1 `ACK`) is never acknowledged: it is reported
//     (server_event::ack_ignored) and counted, so that two receivers that both answer
//     everything cannot loop;
//   - after server_options::max_bad_frames bad frames in a row (any of the above but the
//     ACK) the connection is closed.
//
// What a peer is told never carries the server's internals: a handler's error or exception
// is answered with a generic text, and its details go to the observer only.
//
// Limits and timeouts (server_options) bound what each peer, and all of them together, can
// hold: connections in total and per source address, bytes buffered, the parse cost of one
// message, concurrent TLS handshakes, and the time a connection may stay idle, spend on one
// frame or take to read a reply. Their defaults suit a listener exposed to untrusted peers;
// 0 turns a limit or a timeout off.
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

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hl7 {

/// Who sent a message; given to the handler beside it, valid until the handler has finished.
struct peer_info {
    /// The connection's remote address and port.
    boost::asio::ip::tcp::endpoint address = {};
    /// With mutual TLS and tls_server_options::allowed_client_names: the allowed name the
    /// client's certificate carries. Empty otherwise.
    std::string_view client_name = {};
};

/// Turns a received message into the reply to send back, typically
/// `co_return hl7::make_ack(m, hl7::verdict::accept);`. Runs on the connection's strand,
/// one message at a time per connection (so replies go out in the order messages came in);
/// connections are served concurrently, so a handler shared by them must be safe to call
/// concurrently. A reply of errc::no_ack_requested sends nothing (the message's MSH-15/16
/// asked for no acknowledgement); any other error, an exception thrown by the handler, or a
/// reply that holds an MLLP block byte (0x0B, 0x1C) is answered with an AE acknowledgement
/// carrying HL7 error 207 and a generic ERR-8 text, and reported to the observer with the
/// details (server_event::handler_error). It is never called for an acknowledgement.
/// The message and the peer_info stay alive, unchanged, until the handler's coroutine has
/// finished; copy them to keep them longer.
using server_handler =
    std::function<boost::asio::awaitable<outcome::result<message>>(const message&, const peer_info&)>;

/// Something the server noticed, for logging. Passed to server_options::observer.
///
/// The kinds marked "rate-limited" are reported at most 10 times in a row and then once a
/// second per kind, over the whole server: the ones in between are counted, and the next one
/// reported says how many were left out (`suppressed`). When none comes within the second,
/// the count is reported on its own: an event of the kind with `suppressed` set and nothing
/// else (no peer). A flood of bad input thus makes a few lines of log, not one per frame; the
/// counters (server::counters()) still count every one.
struct server_event {
    enum class kind {
        accepted,      ///< a connection was accepted from `peer`
        received,      ///< a message arrived from `peer`; `control_id` is its MSH-10
        replied,       ///< the reply to `control_id` was written
        bad_frame,     ///< rate-limited: a frame was dropped: `error` is frame_too_large or
                       ///< invalid_frame
        unparsable,    ///< rate-limited: a frame did not parse (`error`); answered with AE when
                       ///< its MSH-10 could be read (`control_id` not empty), otherwise dropped
        handler_error, ///< rate-limited: the handler failed; `error` is its error
                       ///< (errc::handler_failed when it threw), `detail` the error's message or
                       ///< the exception's what(); answered with AE
        disconnected,  ///< the connection from `peer` ended; `error` says why: eof when the peer
                       ///< closed, errc::closed when the server was stopped, a timeout or limit
                       ///< otherwise; `detail` the exception's what() for errc::session_failed
        handshake_failed, ///< rate-limited: the TLS handshake with `peer` failed: `error` names
                          ///< why (errc::tls_no_client_certificate, tls_plaintext_peer,
                          ///< tls_handshake_timeout...)
        refused,       ///< rate-limited: a connection from `peer` was refused: `error` is
                       ///< errc::source_not_allowed, too_many_connections or
                       ///< too_many_from_source (closed before any byte was read), or
                       ///< tls_client_not_allowed (closed after the handshake; `detail` lists
                       ///< the certificate's names)
        limit_reached, ///< rate-limited: a limit was reached on the connection from `peer`:
                       ///< `error` is errc::message_too_complex (the message was refused),
                       ///< buffer_limit or too_many_bad_frames (the connection is closed)
        timed_out,     ///< rate-limited: the connection from `peer` is closed for a timeout:
                       ///< `error` is errc::idle_timeout, frame_timeout or write_timeout
        ack_ignored,   ///< rate-limited: an acknowledgement arrived (`control_id` its MSH-10);
                       ///< it is not acknowledged
        accept_failed, ///< accepting failed with `error` (out of descriptors, say): the server
                       ///< pauses 100 ms and tries again; reported once until an accept succeeds
    };
    kind what = kind::accepted;
    boost::asio::ip::tcp::endpoint peer = {};
    std::string_view control_id = {};
    boost::system::error_code error = {};
    std::string_view detail = {};
    /// For the rate-limited kinds: events of this kind left out since the previous report.
    std::uint64_t suppressed = 0;
};

/// The limits and timeouts of a server, for counting how often each was reached.
enum class server_limit : std::uint8_t {
    allowed_sources,      ///< a connection refused: source not in the allow-list
    max_connections,      ///< a connection refused: the server was full
    max_per_source,       ///< a connection refused: its source was full
    allowed_client_names, ///< a connection closed after the TLS handshake: client not allowed
    max_handshakes,       ///< accepting paused: that many TLS handshakes were under way
    max_buffered,         ///< a connection closed: the budget of buffered bytes was spent
    max_segments,         ///< a message refused: too many segments
    max_fields,           ///< a message refused: too many fields
    max_bad_frames,       ///< a connection closed: too many bad frames in a row
    idle_timeout,         ///< a connection closed: no message in time
    frame_timeout,        ///< a connection closed: a frame not finished in time
    write_timeout,        ///< a connection closed: a reply not read in time
    handshake_timeout,    ///< a connection closed: the TLS handshake not finished in time
};
/// The number of server_limit values.
inline constexpr std::size_t server_limit_count = 13;

/// The limit's name as spelled above ("max_connections").
std::string_view to_string(server_limit limit) noexcept;

/// Handler round trips (from the handler's call to its reply), in fixed buckets.
struct server_histogram {
    /// Upper bounds of the buckets, in seconds; one more bucket takes everything above.
    static constexpr std::array<double, 12> bounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05,   0.1,   0.25,   0.5,   1.0,  10.0};
    /// Round trips per bucket (not cumulative): buckets[i] counts those above bounds[i - 1]
    /// and at most bounds[i]; the last counts those above 10 s.
    std::array<std::uint64_t, bounds.size() + 1> buckets{};
    std::uint64_t count = 0;               ///< round trips observed
    std::chrono::microseconds sum{};       ///< their total duration
};

/// Counters of a server, exact under concurrency; read them any time, from any thread. Each
/// member is exact; members read together are not one atomic snapshot while the server runs.
struct server_counters {
    std::uint64_t connections = 0; ///< connections accepted (refused ones are not)
    std::uint64_t received = 0;    ///< messages received (frames parsed or not, ACKs included)
    std::uint64_t replied = 0;     ///< replies written
    std::uint64_t errors = 0;      ///< bad frames, unparsable or refused messages, handler errors,
                                   ///< failed handshakes and connections ended by an exception
    std::uint64_t open = 0;        ///< connections open now
    std::uint64_t bad_frames = 0;  ///< frames dropped as oversized or cut short
    std::uint64_t acks_ignored = 0; ///< acknowledgements received, deliberately not acknowledged
    std::uint64_t bytes_received = 0; ///< MLLP bytes read (after TLS decryption)
    std::uint64_t bytes_sent = 0;     ///< MLLP bytes of the replies written, framing included
    /// Replies written, by their MSA-1 (index: hl7::ack_code); a reply of the handler's
    /// without a known MSA-1 is counted in `replied` only.
    std::array<std::uint64_t, 6> replies_by_code{};
    /// How often each limit or timeout was reached (index: server_limit).
    std::array<std::uint64_t, server_limit_count> limits{};
    /// Handler round trips.
    server_histogram handler_time{};
};

/// Where and how a server listens, and what it lets its peers do.
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
    /// Told about connections, messages and errors (see server_event); called on a
    /// connection's strand, or the acceptor's for accept_failed and connections refused before
    /// any byte was read. It must not block, and is called concurrently for different
    /// connections. An exception it throws ends that connection (errc::session_failed); one
    /// thrown on the acceptor's strand is ignored. Empty: nothing is reported.
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

    // --- exposure to untrusted peers ----------------------------------------------------------
    /// Source networks allowed to connect, in CIDR notation ("10.1.0.0/16", "192.0.2.7",
    /// "2001:db8::/48"; an IPv4 network also matches IPv4-mapped IPv6 addresses). A connection
    /// from anywhere else is closed before any byte is read (server_event::refused,
    /// errc::source_not_allowed). Empty: every source is allowed. server::create fails with
    /// errc::invalid_network for a malformed entry.
    std::vector<std::string> allowed_sources = {};
    /// Connections open at once; one more is closed as soon as it is accepted
    /// (errc::too_many_connections). Keep it below the process's descriptor limit. 0: no limit.
    std::size_t max_connections = 1000;
    /// Connections open at once from one source: an IPv4 address, or an IPv6 /64 network
    /// (what one host is usually given). One more is closed as soon as it is accepted
    /// (errc::too_many_from_source), so that one source cannot lock the others out. 0: no limit.
    std::size_t max_per_source = 100;
    /// TLS handshakes under way at once (they cost CPU): at the limit, the server stops
    /// accepting until one finishes; new connections wait in the listen backlog. 0: no limit.
    std::size_t max_handshakes = 64;
    /// Bytes all connections together may hold beyond 64 KiB each: frames being assembled,
    /// messages being handled (their text) and replies waiting to be written. A connection
    /// that needs more is closed (errc::buffer_limit). With the per-connection allowance and
    /// the 16 KiB read buffer of each connection, the server's buffers stay within
    /// max_buffered + max_connections * 80 KiB (a parsed message's index adds about its
    /// size again). 0: no limit.
    std::size_t max_buffered = std::size_t{128} << 20;
    /// Segments one message may have (counted as line ends before parsing, so that refusing
    /// a frame of millions of tiny segments costs one scan of its bytes). A message with more
    /// is not parsed and is answered with AR, HL7 error 207 (errc::message_too_complex). 0: no
    /// limit.
    std::size_t max_segments = 50000;
    /// Field separators one message may have, counted and handled as max_segments. 0: no limit.
    std::size_t max_fields = 1000000;
    /// Bad frames in a row (dropped, unparsable or too complex) after which the connection is
    /// closed (errc::too_many_bad_frames); a message answered in between starts the count
    /// again. 0: never closed for that.
    std::uint32_t max_bad_frames = 10;
    /// Time a connection may go without beginning a message, from its start or its last
    /// message; bytes outside frames do not count. On expiry it is closed (errc::idle_timeout).
    /// 0: no limit.
    std::chrono::milliseconds idle_timeout = std::chrono::minutes(5);
    /// Time a frame may take from its first byte to its last, so that a peer sending a byte
    /// now and then cannot hold a connection and its buffer (at the default 60 s, a 16 MiB
    /// frame needs 2.3 Mbit/s). On expiry the connection is closed (errc::frame_timeout).
    /// 0: no limit.
    std::chrono::milliseconds frame_timeout = std::chrono::seconds(60);
    /// Time a reply may take to be written (a peer that does not read holds it up). On expiry
    /// the connection is closed (errc::write_timeout). 0: no limit.
    std::chrono::milliseconds write_timeout = std::chrono::seconds(30);
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
    /// an IP address literal, errc::invalid_network for a malformed allowed_sources entry, or
    /// errc::tls_setup_failed when the TLS files cannot be loaded or allowed_client_names is
    /// set without client_ca_file.
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
    /// signature void(), once every connection is closed and every handler has returned; never
    /// inside this call, but through the handler's associated executor (by default the
    /// server's). Calling it again is harmless; every call completes. Not cancellable.
    /// Default token: deferred.
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
