// What a lane does after a sending failed: try again after a backoff, or give the message up
// (a dead letter). Pure: the decision depends only on the error, the message's attempts and
// age, the time given and a seeded generator for the jitter.
#pragma once

#include <hl7/outbox/outbox.hpp>

#include <boost/system/error_code.hpp>

#include <cstdint>
#include <random>

namespace hl7::detail {

/// A failure that no retry can cure: the message cannot be framed or sent as it is.
bool permanent_failure(const boost::system::error_code& ec) noexcept;

struct retry_decision {
    enum class kind {
        retry,   ///< try again after `delay`
        give_up, ///< record the message failed
    };
    kind what = kind::retry;
    outbox_clock::duration delay{};

    static retry_decision retry_after(outbox_clock::duration d) { return {kind::retry, d}; }
    static retry_decision give_up() { return {kind::give_up, {}}; }
    friend bool operator==(const retry_decision&, const retry_decision&) = default;
};

class retry_schedule {
public:
    retry_schedule(const outbox_retry_policy& policy, std::uint64_t seed);

    /// After the `attempts`-th attempt (1-based) of a message queued at `queued_at` failed
    /// with `ec`.
    retry_decision after_failure(const boost::system::error_code& ec, std::uint32_t attempts,
                                 outbox_clock::time_point queued_at, outbox_clock::time_point now);

    /// The backoff before the attempt that follows attempt `attempts`, jitter included.
    outbox_clock::duration delay(std::uint32_t attempts);

private:
    outbox_retry_policy policy_;
    std::mt19937_64 rng_;
};

} // namespace hl7::detail
