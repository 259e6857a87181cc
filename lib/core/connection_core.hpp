// The I/O-free heart of a connection: its life (connecting, connected, backing off,
// failed, closing, closed), the send queue, the message in flight and the matching of
// acknowledgements. It is stepped by events (a send, a connect result, bytes read, a write
// result, a timer) each stamped with the current time, and answers with actions for the
// Asio layer to carry out: connect, write, close the socket, complete a send, notify the
// observer, arm the one timer. Nothing here sleeps or touches a socket, so every path is
// tested by stepping it with a made-up clock.
#pragma once

#include <hl7/net/client.hpp>
#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>
#include <hl7/model/mllp.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <random>
#include <variant>
#include <string>
#include <vector>

namespace hl7::detail {

using clock = std::chrono::steady_clock;

/// The delay schedule of reconnect_policy, with its jitter drawn from a seeded generator.
class backoff {
public:
    backoff(const reconnect_policy& policy, std::uint64_t seed);

    /// The wait before the next attempt after `failures` consecutive failed attempts, or,
    /// with failures == 0, after a lost link.
    clock::duration delay(std::uint32_t failures);

private:
    reconnect_policy policy_;
    std::mt19937_64 rng_;
};

/// Counters shared between a connection and its client; atomics so that they can be read
/// from any thread while the connection's strand updates them.
struct counter_block {
    std::atomic<std::uint64_t> sent{0}, acknowledged{0}, rejected{0}, timed_out{0}, failed{0}, reconnects{0},
        queued{0}, discarded{0};

    connection_counters snapshot() const noexcept;
};

/// Adds `more` to `total`, member by member.
void add(connection_counters& total, const connection_counters& more) noexcept;

/// An event with owned text, kept in an action until the observer is called.
struct owned_event {
    connection_event::kind what;
    std::uint32_t attempt = 0;
    clock::duration delay{};
    boost::system::error_code error{};
    std::string control_id{};
    hl7::ack_code code = hl7::ack_code::AA;
    clock::duration round_trip{};
    boost::asio::ip::tcp::endpoint endpoint{};

    connection_event view() const;
};

class connection_core {
public:
    using send_id = std::uint64_t;

    struct action {
        enum class kind {
            connect,      ///< resolve and connect (link `link`, attempt `attempt`); report with connected() or connect_failed()
            write,        ///< write the frame of send `id` on link `link`; report with written()
            close_socket, ///< close the socket of link `link`
            complete,     ///< complete send `id` with `error`, or with `ack` when error is clear
            notify,       ///< tell the observer `ev`
            arm_timer,    ///< let the one timer expire at `deadline` (time_point::max(): never); it may
                          ///< be earlier than what is due, never later
            closed,       ///< the connection reached connection_state::closed; complete close waiters
        };
        kind what;
        std::uint64_t link = 0;
        send_id id = 0;
        std::uint32_t attempt = 0;
        boost::system::error_code error{};
        clock::time_point deadline{};
        // The ACK of a successful `complete`, the event of a `notify`. Kept apart from the
        // plain members so that the many actions without them stay cheap to move.
        std::variant<std::monostate, hl7::ack, owned_event> data{};

        /// The ACK of a `complete` (a default ack when it failed).
        hl7::ack take_ack()
        {
            auto* a = std::get_if<hl7::ack>(&data);
            return a ? std::move(*a) : hl7::ack{};
        }
        /// The event of a `notify`.
        const owned_event& event() const { return std::get<owned_event>(data); }
    };

    connection_core(const connection_options& options, counter_block& counters, std::uint64_t seed);

    // --- inputs ---------------------------------------------------------------------------
    void start(clock::time_point now);
    void send(send_id id, std::string control_id, clock::time_point now);
    void cancel(send_id id, bool terminal, clock::time_point now);
    void close(clock::time_point now);
    /// TLS: the TCP connection of `link` is up and its handshake starts; from now the
    /// handshake timeout applies instead of the connect timeout.
    void handshaking(std::uint64_t link, clock::time_point now);
    void connected(std::uint64_t link, const boost::asio::ip::tcp::endpoint& peer, clock::time_point now);
    void connect_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now);
    void written(std::uint64_t link, boost::system::error_code ec, clock::time_point now);
    void received(std::uint64_t link, std::string_view bytes, clock::time_point now);
    void read_failed(std::uint64_t link, boost::system::error_code ec, clock::time_point now);
    void timer_fired(clock::time_point now);

    // --- outputs --------------------------------------------------------------------------
    /// Takes the next action to carry out, in order; false when there is none.
    bool next(action& out);

    connection_state state() const noexcept { return state_; }
    std::size_t queued() const noexcept { return queue_.size(); }
    bool in_flight() const noexcept { return inflight_.has_value(); }

private:
    struct queued_send {
        send_id id;
        std::string control_id;
        clock::time_point deadline;
    };
    struct flight {
        send_id id;
        std::string control_id;
        clock::time_point started;
        clock::time_point deadline;
        bool abandoned = false; // its handler already completed (terminal cancellation)
    };

    void begin_connect(clock::time_point now);
    void retry_or_give_up(boost::system::error_code ec, clock::time_point now);
    void link_lost(boost::system::error_code ec, clock::time_point now);
    void finish_close();
    void try_write(clock::time_point now);
    bool on_frame(std::string_view payload, clock::time_point now);
    void finish_flight(boost::system::error_code ec, hl7::ack ack = {});
    void complete(send_id id, boost::system::error_code ec, hl7::ack ack = {});
    void fail_queue(boost::system::error_code ec);
    void notify(owned_event ev);
    void remember(std::string control_id);
    bool recently_finished(std::string_view control_id) const noexcept;
    void rearm();
    void arm(clock::time_point t);
    void disarm();

    connection_options options_;
    counter_block& counters_;
    backoff backoff_;
    connection_state state_;
    std::uint64_t link_ = 0;
    std::uint32_t failures_ = 0;
    std::uint32_t failures_before_connect_ = 0; // restored when the peer refuses our certificate after all
    bool ever_connected_ = false;
    bool write_pending_ = false;
    bool handshaking_ = false;
    clock::time_point deadline_ = clock::time_point::max(); // of the connect attempt or the backoff
    clock::time_point armed_ = clock::time_point::max();
    boost::system::error_code last_error_{};
    std::deque<queued_send> queue_;
    std::optional<flight> inflight_;
    mllp::decoder decoder_;
    std::array<std::string, 8> recent_{}; // control ids of recently finished sends
    std::size_t recent_next_ = 0;
    std::vector<action> actions_;
    std::size_t taken_ = 0; // actions_ already handed out by next()
};

} // namespace hl7::detail
