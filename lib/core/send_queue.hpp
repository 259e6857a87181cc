// The messages waiting to be written, in the order they were sent, each with the deadline
// of its wait.
#pragma once

#include "core/connection_action.hpp"
#include "core/connection_shared.hpp"

#include <algorithm>
#include <deque>
#include <string>

namespace hl7::detail {

class send_queue {
public:
    struct entry {
        send_id id;
        std::string control_id;
        clock::time_point deadline;
    };

    /// `limit`: most entries at once; `counters.queued` follows the size.
    send_queue(std::size_t limit, counter_block& counters) : limit_(limit), counters_(counters) {}

    bool empty() const noexcept { return entries_.empty(); }
    bool full() const noexcept { return entries_.size() >= limit_; }
    std::size_t size() const noexcept { return entries_.size(); }
    const entry& front() const { return entries_.front(); }
    /// The earliest deadline: the first entry's, since every wait has the same limit.
    clock::time_point deadline() const noexcept
    {
        return entries_.empty() ? clock::time_point::max() : entries_.front().deadline;
    }

    void push(send_id id, std::string control_id, clock::time_point deadline)
    {
        entries_.push_back({id, std::move(control_id), deadline});
        counters_.queued.fetch_add(1, std::memory_order_relaxed);
    }

    entry pop()
    {
        entry e = std::move(entries_.front());
        entries_.pop_front();
        counters_.queued.fetch_sub(1, std::memory_order_relaxed);
        return e;
    }

    /// Removes the entry of `id`, wherever it is; false when there is none.
    bool remove(send_id id)
    {
        const auto it = std::find_if(entries_.begin(), entries_.end(), [id](const entry& e) { return e.id == id; });
        if (it == entries_.end())
            return false;
        entries_.erase(it);
        counters_.queued.fetch_sub(1, std::memory_order_relaxed);
        return true;
    }

    /// Removes the entries whose deadline has passed, calling `expired(id)` for each, in order.
    template <class F>
    void expire(clock::time_point now, F&& expired)
    {
        while (!entries_.empty() && now >= entries_.front().deadline)
            expired(pop().id);
    }

    /// Removes every entry, calling `removed(id)` for each, in order.
    template <class F>
    void clear(F&& removed)
    {
        while (!entries_.empty())
            removed(pop().id);
    }

private:
    std::size_t limit_;
    counter_block& counters_;
    std::deque<entry> entries_;
};

} // namespace hl7::detail
