// The one timer of a connection, shared by every deadline (connect, backoff, ACKs, queue).
//
// It is armed lazily: only when a deadline comes before the one armed. A later or vanished
// deadline leaves the timer as it is; when it fires early, the owner arms it for what is due
// next. In the steady state (one ACK deadline after another) this spares two timer updates,
// each a system call, per message.
#pragma once

#include "core/connection_action.hpp"

namespace hl7::detail {

class lazy_timer {
public:
    /// The time armed now; max() when not armed.
    clock::time_point armed() const noexcept { return armed_; }

    /// Arms the timer for `earliest` unless it will fire by then anyway.
    void want(clock::time_point earliest, output& out)
    {
        if (earliest < armed_)
            arm(earliest, out);
    }
    /// It fired: nothing is armed any more.
    void fired() noexcept { armed_ = clock::time_point::max(); }
    /// Nothing can be due any more (closed, or gave up): lets the timer go.
    void release(output& out)
    {
        if (armed_ != clock::time_point::max())
            arm(clock::time_point::max(), out);
    }

private:
    void arm(clock::time_point t, output& out)
    {
        armed_ = t;
        out.push(action::arm_timer(t));
    }

    clock::time_point armed_ = clock::time_point::max();
};

} // namespace hl7::detail
