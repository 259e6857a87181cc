#include "core/connection_action.hpp"

#include <ostream>

namespace hl7 {

std::string_view to_string(connection_state s) noexcept
{
    switch (s) {
    case connection_state::idle: return "idle";
    case connection_state::connecting: return "connecting";
    case connection_state::connected: return "connected";
    case connection_state::backing_off: return "backing_off";
    case connection_state::failed: return "failed";
    case connection_state::closing: return "closing";
    case connection_state::closed: return "closed";
    }
    return "unknown";
}

std::string_view to_string(connection_event::kind k) noexcept
{
    using kind = connection_event::kind;
    switch (k) {
    case kind::connecting: return "connecting";
    case kind::connected: return "connected";
    case kind::disconnected: return "disconnected";
    case kind::reconnect_scheduled: return "reconnect_scheduled";
    case kind::gave_up: return "gave_up";
    case kind::sent: return "sent";
    case kind::acknowledged: return "acknowledged";
    case kind::timed_out: return "timed_out";
    case kind::discarded: return "discarded";
    case kind::closed: return "closed";
    }
    return "unknown";
}

} // namespace hl7

namespace hl7::detail {

clock::time_point after(clock::time_point now, std::chrono::milliseconds d) noexcept
{
    using std::chrono::duration_cast;
    if (d.count() <= 0)
        return now;
    const auto room = clock::time_point::max() - now;
    if (d >= duration_cast<std::chrono::milliseconds>(room))
        return clock::time_point::max();
    return now + duration_cast<clock::duration>(d);
}

// --- events ------------------------------------------------------------------------------

using event_kind = connection_event::kind;

owned_event owned_event::connecting(std::uint32_t attempt)
{
    return {.what = event_kind::connecting, .attempt = attempt};
}

owned_event owned_event::connected(const boost::asio::ip::tcp::endpoint& peer)
{
    return {.what = event_kind::connected, .endpoint = peer};
}

owned_event owned_event::disconnected(boost::system::error_code why)
{
    return {.what = event_kind::disconnected, .error = why};
}

owned_event owned_event::reconnect_scheduled(std::uint32_t attempt, clock::duration delay, boost::system::error_code why)
{
    return {.what = event_kind::reconnect_scheduled, .attempt = attempt, .delay = delay, .error = why};
}

owned_event owned_event::gave_up(std::uint32_t attempts, boost::system::error_code last)
{
    return {.what = event_kind::gave_up, .attempt = attempts, .error = last};
}

owned_event owned_event::sent(std::string control_id)
{
    return {.what = event_kind::sent, .control_id = std::move(control_id)};
}

owned_event owned_event::acknowledged(std::string control_id, hl7::ack_code code, clock::duration round_trip)
{
    return {.what = event_kind::acknowledged, .control_id = std::move(control_id), .code = code, .round_trip = round_trip};
}

owned_event owned_event::timed_out(std::string control_id)
{
    return {.what = event_kind::timed_out, .control_id = std::move(control_id)};
}

owned_event owned_event::discarded(boost::system::error_code why)
{
    return {.what = event_kind::discarded, .error = why};
}

owned_event owned_event::closed()
{
    return {.what = event_kind::closed};
}

connection_event owned_event::view() const
{
    using namespace std::chrono;
    return connection_event{what,
                            attempt,
                            duration_cast<milliseconds>(delay),
                            error,
                            control_id,
                            code,
                            duration_cast<microseconds>(round_trip),
                            endpoint};
}

// --- actions -----------------------------------------------------------------------------

action action::connect(std::uint64_t link, std::uint32_t attempt)
{
    action a;
    a.what_ = kind::connect;
    a.link_ = link;
    a.attempt_ = attempt;
    return a;
}

action action::write(std::uint64_t link, send_id id)
{
    action a;
    a.what_ = kind::write;
    a.link_ = link;
    a.id_ = id;
    return a;
}

action action::close_socket(std::uint64_t link)
{
    action a;
    a.what_ = kind::close_socket;
    a.link_ = link;
    return a;
}

action action::complete(send_id id, boost::system::error_code ec)
{
    action a;
    a.what_ = kind::complete;
    a.id_ = id;
    a.error_ = ec;
    return a;
}

action action::complete(send_id id, hl7::ack ack)
{
    action a;
    a.what_ = kind::complete;
    a.id_ = id;
    a.data_ = std::move(ack);
    return a;
}

action action::notify(owned_event ev)
{
    action a;
    a.what_ = kind::notify;
    a.data_ = std::move(ev);
    return a;
}

action action::arm_timer(clock::time_point deadline)
{
    action a;
    a.what_ = kind::arm_timer;
    a.deadline_ = deadline;
    return a;
}

action action::closed()
{
    action a;
    a.what_ = kind::closed;
    return a;
}

hl7::ack action::take_ack()
{
    auto* a = std::get_if<hl7::ack>(&data_);
    return a ? std::move(*a) : hl7::ack{};
}

bool operator==(const action& a, const action& b)
{
    if (a.what_ != b.what_ || a.link_ != b.link_ || a.id_ != b.id_ || a.attempt_ != b.attempt_ ||
        a.error_ != b.error_ || a.deadline_ != b.deadline_ || a.data_.index() != b.data_.index())
        return false;
    if (const auto* x = std::get_if<hl7::ack>(&a.data_)) {
        const auto& y = std::get<hl7::ack>(b.data_);
        return x->message().str() == y.message().str() && x->code() == y.code() && x->round_trip() == y.round_trip();
    }
    if (const auto* x = std::get_if<owned_event>(&a.data_))
        return *x == std::get<owned_event>(b.data_);
    return true;
}

std::ostream& operator<<(std::ostream& out, const owned_event& e)
{
    out << to_string(e.what);
    if (e.attempt)
        out << " attempt " << e.attempt;
    if (e.delay.count())
        out << " delay " << std::chrono::duration_cast<std::chrono::microseconds>(e.delay).count() << "us";
    if (e.error)
        out << " error " << e.error.message();
    if (!e.control_id.empty())
        out << " " << e.control_id;
    if (e.what == connection_event::kind::acknowledged)
        out << " " << to_string(e.code) << " after "
            << std::chrono::duration_cast<std::chrono::microseconds>(e.round_trip).count() << "us";
    if (e.what == connection_event::kind::connected)
        out << " " << e.endpoint;
    return out;
}

std::ostream& operator<<(std::ostream& out, const action& a)
{
    using k = action::kind;
    switch (a.what()) {
    case k::connect: return out << "connect(link " << a.link() << ", attempt " << a.attempt() << ")";
    case k::write: return out << "write(link " << a.link() << ", id " << a.id() << ")";
    case k::close_socket: return out << "close_socket(link " << a.link() << ")";
    case k::complete:
        out << "complete(id " << a.id() << ", ";
        if (a.error())
            out << a.error().message();
        else
            out << to_string(a.ack().code()) << " " << a.ack().control_id();
        return out << ")";
    case k::notify: return out << "notify(" << a.event() << ")";
    case k::arm_timer:
        if (a.deadline() == clock::time_point::max())
            return out << "arm_timer(never)";
        return out << "arm_timer(" << std::chrono::duration_cast<std::chrono::milliseconds>(a.deadline().time_since_epoch()).count()
                   << "ms)";
    case k::closed: return out << "closed()";
    }
    return out;
}

} // namespace hl7::detail
