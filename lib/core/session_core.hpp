// The I/O-free heart of one server connection: the TLS handshake's deadline, frames decoded
// from the bytes read, the parse-cost bound, the reply policy (what is answered, with what,
// and what is deliberately not), one handler at a time and replies in order, the idle, frame
// and write timeouts, the stop, and the connection's share of the server's byte budget. It is
// stepped by inputs (bytes read, a handler's result, a write finished, a timer, a stop), each
// stamped with the current time, and answers with actions for the Asio layer to carry out.
// Nothing here sleeps or touches a socket, so every path is tested with a made-up clock.
#pragma once

#include "core/action_queue.hpp"
#include "core/server_shared.hpp"

#include <hl7/model/message.hpp>
#include <hl7/model/mllp.hpp>
#include <hl7/net/server.hpp>

#include <boost/asio/ip/tcp.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hl7::detail {

/// A server event with owned text, kept in an action until the observer is called.
struct owned_server_event {
    server_event::kind what = server_event::kind::accepted;
    boost::asio::ip::tcp::endpoint peer{};
    std::string control_id{};
    boost::system::error_code error{};
    std::string detail{};
    std::uint64_t suppressed = 0;

    server_event view() const noexcept;
    bool operator==(const owned_server_event&) const = default;
};

/// Whether server_event kind `k` is rate-limited (see server_event).
bool rate_limited(server_event::kind k) noexcept;

/// What a session needs of the server's options, with time in the core's clock.
struct session_config {
    std::size_t max_frame = mllp::default_max_frame;
    std::size_t max_segments = 0; ///< 0: no limit, as for each limit and timeout here
    std::size_t max_fields = 0;
    std::uint32_t max_bad_frames = 0;
    clock::duration idle_timeout{};
    clock::duration frame_timeout{};
    clock::duration write_timeout{};
    clock::duration close_timeout{};
    bool tls = false;
    clock::duration handshake_timeout{};
    std::vector<std::string> allowed_client_names{};
    bool observed = false; ///< an observer is set: notify actions are wanted

    static session_config from(const server_options& o);
};

/// Bytes each connection may hold without drawing on the server's budget.
inline constexpr std::size_t session_allowance = std::size_t{64} << 10;

/// One step for the Asio layer, compared whole in tests.
class session_action {
public:
    enum class kind {
        handshake, ///< start the TLS handshake; report with handshake_done() or handshake_failed()
        read,      ///< read some bytes; report with received() or read_failed(). The bytes must
                   ///< stay valid until the core asks for the next read
        handle,    ///< run the handler with message(); report with handled() or handler_threw().
                   ///< The message lives in the core until then
        write,     ///< write bytes() as a frame; report with written(). The bytes live in the
                   ///< core until then
        close,     ///< close the socket (reason(): why); what is outstanding completes anyway
        notify,    ///< tell the observer event()
        arm_timer, ///< let the one timer expire at deadline() (time_point::max(): never); it
                   ///< may be earlier than what is due, never later
        done,      ///< nothing is outstanding any more: the session is over
    };

    session_action() = default;
    static session_action handshake() { return session_action(kind::handshake); }
    static session_action read() { return session_action(kind::read); }
    static session_action handle(const hl7::message& m);
    static session_action write(std::string_view bytes);
    static session_action close(boost::system::error_code why);
    static session_action notify(owned_server_event e);
    static session_action arm_timer(clock::time_point deadline);
    static session_action done() { return session_action(kind::done); }

    kind what() const noexcept { return what_; }
    const hl7::message& message() const noexcept { return *message_; }
    std::string_view bytes() const noexcept { return bytes_; }
    boost::system::error_code reason() const noexcept { return error_; }
    const owned_server_event& event() const noexcept { return *event_; }
    clock::time_point deadline() const noexcept { return deadline_; }

    /// Same kind and same content: the message's or the reply's bytes, the reason, the
    /// event, the deadline.
    friend bool operator==(const session_action& a, const session_action& b);

private:
    explicit session_action(kind k) noexcept : what_(k) {}

    kind what_ = kind::done;
    const hl7::message* message_ = nullptr;
    std::string_view bytes_{};
    boost::system::error_code error_{};
    clock::time_point deadline_{};
    std::optional<owned_server_event> event_{};
};

class session_core {
public:
    using action = session_action;
    using time_point = clock::time_point;

    /// A connection from `peer`, accepted at `now`: reports it, then starts the handshake
    /// (TLS) or the first read.
    session_core(const session_config& config, server_shared& shared, boost::asio::ip::tcp::endpoint peer,
                 time_point now);
    session_core(const session_core&) = delete;
    session_core& operator=(const session_core&) = delete;
    ~session_core();

    // --- inputs ---------------------------------------------------------------------------
    /// The handshake succeeded; `names` are the client certificate's subject CN and
    /// subjectAltName DNS names and IP addresses (empty without a client certificate).
    void handshake_done(const std::vector<std::string>& names, time_point now);
    void handshake_failed(boost::system::error_code ec, time_point now);
    void received(std::string_view bytes, time_point now);
    void read_failed(boost::system::error_code ec, time_point now);
    void handled(outcome::result<hl7::message> result, time_point now);
    void handler_threw(std::string what, time_point now);
    void written(boost::system::error_code ec, time_point now);
    void timer_fired(time_point now);
    /// The server stops: see server::async_close.
    void stop(time_point now);
    /// Ends the connection at once, for `why` (the observer threw, say).
    void abort(boost::system::error_code why, std::string detail, time_point now);

    // --- outputs --------------------------------------------------------------------------
    /// Takes the next action to carry out, in order; false when there is none.
    bool next(action& out) { return actions_.next(out); }

    /// The allowed name the client's certificate carries (see peer_info).
    std::string_view client_name() const noexcept { return client_name_; }
    /// What the session holds in buffers, and what of it is charged to the server's budget.
    std::size_t held() const noexcept;
    std::size_t charged() const noexcept { return charged_; }
    /// The earliest deadline that applies now (time_point::max(): none) and the timer's.
    time_point due() const noexcept;
    time_point armed() const noexcept { return armed_; }
    bool closed() const noexcept { return phase_ == phase::closed; }

private:
    enum class phase { handshaking, reading, handling, writing, closed };

    void start_reading(time_point now);
    void drain(time_point now);
    void on_frame(std::string_view payload, time_point now);
    bool too_complex(std::string_view payload, time_point now);
    bool bad(time_point now);
    void reply(hl7::message m, std::string control_id, time_point now);
    bool completed(bool& outstanding, phase asked_in);
    bool handler_returned(time_point now);
    void handler_failed(boost::system::error_code ec, std::string detail, time_point now);
    void message_done(time_point now);
    void close(boost::system::error_code why, time_point now, std::string detail = {});
    void maybe_done();
    bool account(time_point now);
    void notify(owned_server_event e, time_point now);
    void rearm();

    const session_config& config_;
    server_shared& shared_;
    const boost::asio::ip::tcp::endpoint peer_;
    phase phase_;
    mllp::decoder decoder_;
    std::optional<hl7::message> in_hand_;   // the message the handler has
    std::optional<hl7::message> reply_;     // the reply being written
    std::string answering_;                 // the control id the reply answers
    std::string client_name_;
    time_point handler_started_{};
    time_point phase_started_{};            // of the handshake, the write, or the idle wait
    std::optional<time_point> frame_started_;
    time_point stop_deadline_ = time_point::max();
    time_point armed_ = time_point::max();
    std::size_t charged_ = 0;
    std::uint32_t bad_streak_ = 0;
    bool stop_requested_ = false;
    bool reading_ = false, writing_ = false, handshaking_ = false, handling_ = false;
    bool done_ = false;
    action_queue<action> actions_;
};

} // namespace hl7::detail
