#include "core/flight_window.hpp"

#include <algorithm>

namespace hl7::detail {

namespace {

// Storage is sized by the window, up to this: a window set absurdly large must not allocate
// for it up front.
constexpr std::size_t sized_up_to = 1024;

} // namespace

// The ring of finished ids covers the last window and a few before it: late ACKs come from
// the messages that finished just before, in whatever order the peer answers.
flight_window::flight_window(std::size_t limit)
    : limit_(std::max<std::size_t>(1, limit)), recent_(std::min(limit_, sized_up_to) + 8)
{
    flights_.reserve(std::min(limit_, sized_up_to));
}

bool flight_window::awaited() const noexcept
{
    return std::any_of(flights_.begin(), flights_.end(), [](const flight& f) { return !f.abandoned; });
}

bool flight_window::holds(std::string_view control_id) const noexcept
{
    return std::any_of(flights_.begin(), flights_.end(), [&](const flight& f) { return f.control_id == control_id; });
}

clock::time_point flight_window::deadline() const noexcept
{
    clock::time_point t = clock::time_point::max();
    for (const flight& f : flights_)
        t = std::min(t, f.deadline);
    return t;
}

// Deadlines grow with the order of writes (one ACK timeout after each write's start), so the
// expired flights are the oldest ones.
std::size_t flight_window::expired(clock::time_point now) const noexcept
{
    std::size_t n = 0;
    while (n < flights_.size() && now >= flights_[n].deadline)
        ++n;
    return n;
}

void flight_window::start(send_id id, std::string control_id, clock::time_point now, clock::time_point deadline)
{
    flights_.push_back({id, std::move(control_id), now, deadline});
}

flight_window::flight& flight_window::wrote()
{
    flight& f = flights_.back();
    f.written = true;
    return f;
}

bool flight_window::abandon(send_id id) noexcept
{
    for (flight& f : flights_)
        if (f.id == id && !f.abandoned) {
            f.abandoned = true;
            return true;
        }
    return false;
}

flight_window::flight* flight_window::find(std::string_view control_id) noexcept
{
    for (flight& f : flights_)
        if (f.control_id == control_id)
            return &f;
    return nullptr;
}

flight_window::flight flight_window::take(const flight& f)
{
    const auto it = std::find_if(flights_.begin(), flights_.end(), [&f](const flight& x) { return &x == &f; });
    flight out = std::move(*it);
    flights_.erase(it);
    remember(out.control_id);
    return out;
}

std::vector<flight_window::flight> flight_window::take_all()
{
    std::vector<flight> out = std::move(flights_);
    flights_.clear();
    flights_.reserve(std::min(limit_, sized_up_to));
    for (const flight& f : out)
        remember(f.control_id);
    return out;
}

bool flight_window::recently_finished(std::string_view control_id) const noexcept
{
    return std::find(recent_.begin(), recent_.end(), control_id) != recent_.end();
}

void flight_window::remember(const std::string& control_id)
{
    recent_[recent_next_] = control_id;
    recent_next_ = (recent_next_ + 1) % recent_.size();
}

} // namespace hl7::detail
