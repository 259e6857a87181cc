// What the connection's core asks of the Asio layer: typed actions with named constructors,
// compared whole in tests. The core's small machines append them to one output, in the
// order they are to be carried out.
#pragma once

#include "core/action_queue.hpp"

#include <hl7/net/client.hpp>
#include <hl7/model/ack.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <variant>
#include <vector>

namespace hl7::detail {

using clock = std::chrono::steady_clock;

/// `now + d`, saturating at time_point::max() (a "never" deadline) instead of overflowing,
/// whatever the option's value.
clock::time_point after(clock::time_point now, std::chrono::milliseconds d) noexcept;

/// The identity of one send, given by the Asio layer.
using send_id = std::uint64_t;

/// A connection_event with its text owned, kept in an action until the observer is called.
struct owned_event {
    connection_event::kind what;
    std::uint32_t attempt = 0;
    clock::duration delay{};
    boost::system::error_code error{};
    std::string control_id{};
    hl7::ack_code code = hl7::ack_code::AA;
    clock::duration round_trip{};
    boost::asio::ip::tcp::endpoint endpoint{};

    static owned_event connecting(std::uint32_t attempt);
    static owned_event connected(const boost::asio::ip::tcp::endpoint& peer);
    static owned_event disconnected(boost::system::error_code why);
    static owned_event reconnect_scheduled(std::uint32_t attempt, clock::duration delay, boost::system::error_code why);
    static owned_event gave_up(std::uint32_t attempts, boost::system::error_code last);
    static owned_event sent(std::string control_id);
    static owned_event acknowledged(std::string control_id, hl7::ack_code code, clock::duration round_trip);
    static owned_event timed_out(std::string control_id);
    static owned_event discarded(boost::system::error_code why = {});
    static owned_event closed();

    connection_event view() const;
    bool operator==(const owned_event&) const = default;
};

class action {
public:
    enum class kind {
        connect,      ///< resolve and connect link(), attempt(); report with connected() or connect_failed()
        write,        ///< write the frame of send id() on link(); report with written()
        close_socket, ///< close the socket of link()
        complete,     ///< complete send id() with error(), or with take_ack() when error() is clear
        notify,       ///< tell the observer event()
        arm_timer,    ///< let the one timer expire at deadline() (time_point::max(): never)
        closed,       ///< the connection reached connection_state::closed; complete close waiters
    };

    action() = default;

    static action connect(std::uint64_t link, std::uint32_t attempt);
    static action write(std::uint64_t link, send_id id);
    static action close_socket(std::uint64_t link);
    /// A failed send.
    static action complete(send_id id, boost::system::error_code ec);
    /// A send answered by `ack`.
    static action complete(send_id id, hl7::ack ack);
    static action notify(owned_event ev);
    static action arm_timer(clock::time_point deadline);
    static action closed();

    kind what() const noexcept { return what_; }
    std::uint64_t link() const noexcept { return link_; }
    send_id id() const noexcept { return id_; }
    std::uint32_t attempt() const noexcept { return attempt_; }
    const boost::system::error_code& error() const noexcept { return error_; }
    clock::time_point deadline() const noexcept { return deadline_; }
    /// The ACK of a successful complete.
    const hl7::ack& ack() const { return std::get<hl7::ack>(data_); }
    /// Moves the ACK of a complete out (a default ack when the send failed).
    hl7::ack take_ack();
    /// The event of a notify.
    const owned_event& event() const { return std::get<owned_event>(data_); }

    /// Equal kinds with equal members; two successful completes compare their ACKs' bytes,
    /// code and round trip.
    friend bool operator==(const action& a, const action& b);

private:
    kind what_ = kind::closed;
    std::uint64_t link_ = 0;
    send_id id_ = 0;
    std::uint32_t attempt_ = 0;
    boost::system::error_code error_{};
    clock::time_point deadline_{};
    // Kept apart from the plain members so that the many actions without them stay cheap to
    // move.
    std::variant<std::monostate, hl7::ack, owned_event> data_{};
};

/// For test messages and the fuzz target's reports: "write(link 2, id 5)".
std::ostream& operator<<(std::ostream& out, const action& a);
std::ostream& operator<<(std::ostream& out, const owned_event& e);

/// Where the core's machines put their actions, in order.
class output {
public:
    /// `observed`: an observer is set; without one, notify() drops events.
    explicit output(bool observed) : observed_(observed) {}

    void push(action a) { actions_.push(std::move(a)); }
    void notify(owned_event ev)
    {
        if (observed_)
            actions_.push(action::notify(std::move(ev)));
    }

    /// Takes the next action, in order; false when there is none.
    bool next(action& out) { return actions_.next(out); }

private:
    bool observed_;
    action_queue<action> actions_;
};

} // namespace hl7::detail
