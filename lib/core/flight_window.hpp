// The messages in flight: written (or being written) and not yet answered, at most
// max_in_flight of them, in the order they were written; and the control ids of the
// messages that finished last, so that their late or repeated ACKs are recognised.
#pragma once

#include "core/connection_action.hpp"

#include <hl7/model/ack.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hl7::detail {

class flight_window {
public:
    struct flight {
        send_id id;
        std::string control_id;
        clock::time_point started;  // when its write began
        clock::time_point deadline; // of its ACK
        bool written = false;       // its write has completed
        bool abandoned = false;     // its handler already completed (terminal cancellation)
        // An ACK that came before the write completed, held until it does.
        std::optional<hl7::ack> held{};
    };

    /// `limit`: max_in_flight (at least 1).
    explicit flight_window(std::size_t limit);

    bool empty() const noexcept { return flights_.empty(); }
    bool full() const noexcept { return flights_.size() >= limit_; }
    std::size_t size() const noexcept { return flights_.size(); }
    /// A write is outstanding (the last flight's).
    bool writing() const noexcept { return !flights_.empty() && !flights_.back().written; }
    /// Some flight's handler has not completed yet.
    bool awaited() const noexcept;
    /// A message with this control id is in flight: another with the same one must wait, or
    /// its ACK could answer either.
    bool holds(std::string_view control_id) const noexcept;
    /// The earliest ACK deadline; max() when empty.
    clock::time_point deadline() const noexcept;
    /// How many flights, from the oldest, have their deadline passed at `now`.
    std::size_t expired(clock::time_point now) const noexcept;
    const flight& oldest() const { return flights_.front(); }
    const std::vector<flight>& flights() const noexcept { return flights_; }

    /// A flight whose write starts now (requires !writing() and !full()).
    void start(send_id id, std::string control_id, clock::time_point now, clock::time_point deadline);
    /// The outstanding write completed: the flight being written.
    flight& wrote();
    /// Marks the flight of `id` abandoned; false when it is not in flight or already was.
    bool abandon(send_id id) noexcept;
    /// The flight whose control id is `control_id`, or nullptr. Valid until the next start().
    flight* find(std::string_view control_id) noexcept;
    /// Removes `f`, remembering its control id.
    flight take(const flight& f);
    /// Removes every flight, oldest first, remembering their control ids.
    std::vector<flight> take_all();

    /// Whether `control_id` is that of a message that finished lately.
    bool recently_finished(std::string_view control_id) const noexcept;

private:
    void remember(const std::string& control_id);

    std::size_t limit_;
    // A vector, not a deque: it keeps its storage from one message to the next, where a deque
    // of entries this large would allocate a block for nearly every one. The window is small,
    // so removing from its middle is cheap, and a flight holds no completion handler.
    std::vector<flight> flights_;
    std::vector<std::string> recent_; // a ring of control ids
    std::size_t recent_next_ = 0;
};

} // namespace hl7::detail
