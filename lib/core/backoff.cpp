#include "core/backoff.hpp"

#include <algorithm>
#include <cmath>

namespace hl7::detail {

namespace {

// Longer waits than this are taken as this: a steady_clock deadline a year away is as good as
// never, and keeps `now + delay` far from overflowing.
constexpr double longest_ms = 365.0 * 24 * 3600 * 1000;

} // namespace

backoff::backoff(const reconnect_policy& policy, std::uint64_t seed)
    : policy_(policy), rng_(seed)
{
}

std::chrono::steady_clock::duration backoff::delay(std::uint32_t failures)
{
    using ms = std::chrono::duration<double, std::milli>;
    const double cap = std::clamp(static_cast<double>(policy_.max.count()), 0.0, longest_ms);
    const double initial = std::clamp(static_cast<double>(policy_.initial.count()), 0.0, cap);
    const double factor = std::max(1.0, policy_.factor); // NaN gives 1 too
    const double exponent = failures > 1 ? static_cast<double>(failures - 1) : 0.0;
    double d = std::min(cap, initial * std::pow(factor, exponent));
    const double jitter = std::clamp(policy_.jitter, 0.0, 1.0);
    if (jitter > 0) {
        std::uniform_real_distribution<double> spread(-jitter, jitter);
        d *= 1.0 + spread(rng_);
    }
    // The spread is applied to the capped delay, so it may reach past the cap: the cap wins.
    d = std::clamp(d, 0.0, cap);
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(ms(d));
}

} // namespace hl7::detail
