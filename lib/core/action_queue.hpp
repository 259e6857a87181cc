// The actions an I/O-free core has for its Asio layer, in order.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace hl7::detail {

/// Actions pushed by a core while it is stepped and taken by the Asio layer, which may step
/// the core again (and so push more) while it takes them.
template <class Action>
class action_queue {
public:
    void push(Action a) { actions_.push_back(std::move(a)); }

    /// The next action, in order; false when there is none.
    bool next(Action& out)
    {
        if (taken_ == actions_.size()) {
            // Emptied in place: the capacity stays, so that a message costs no allocation here.
            actions_.clear();
            taken_ = 0;
            return false;
        }
        out = std::move(actions_[taken_++]);
        return true;
    }

private:
    std::vector<Action> actions_;
    std::size_t taken_ = 0; // actions already handed out
};

} // namespace hl7::detail
