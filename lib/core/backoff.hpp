// The delay schedule of reconnect_policy.
#pragma once

#include <hl7/net/client.hpp>

#include <chrono>
#include <cstdint>
#include <random>

namespace hl7::detail {

/// The waits between connection attempts, with their jitter drawn from a seeded generator.
class backoff {
public:
    backoff(const reconnect_policy& policy, std::uint64_t seed);

    /// The wait before the next attempt after `failures` consecutive failed attempts, or,
    /// with failures == 0, after a lost link: min(max, initial * factor^(failures-1)), spread
    /// by +-jitter, and always within [0, max] (whatever the policy's values).
    std::chrono::steady_clock::duration delay(std::uint32_t failures);

private:
    reconnect_policy policy_;
    std::mt19937_64 rng_;
};

} // namespace hl7::detail
