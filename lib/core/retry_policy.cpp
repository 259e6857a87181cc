#include "core/retry_policy.hpp"

#include <algorithm>
#include <cmath>

namespace hl7::detail {

bool permanent_failure(const boost::system::error_code& ec) noexcept
{
    return ec == errc::block_byte_in_message || ec == errc::message_too_large || ec == errc::hook_failed ||
           ec == errc::missing_control_id || ec == errc::not_hl7 || ec == errc::invalid_encoding_characters;
}

retry_schedule::retry_schedule(const outbox_retry_policy& policy, std::uint64_t seed) : policy_(policy), rng_(seed) {}

retry_decision retry_schedule::after_failure(const boost::system::error_code& ec, std::uint32_t attempts,
                                             outbox_clock::time_point queued_at, outbox_clock::time_point now)
{
    if (permanent_failure(ec))
        return retry_decision::give_up();
    if (policy_.max_attempts != 0 && attempts >= policy_.max_attempts)
        return retry_decision::give_up();
    if (policy_.max_age.count() > 0 && now - queued_at >= policy_.max_age)
        return retry_decision::give_up();
    return retry_decision::retry_after(delay(attempts));
}

outbox_clock::duration retry_schedule::delay(std::uint32_t attempts)
{
    using ms = std::chrono::duration<double, std::milli>;
    const double factor = std::max(1.0, policy_.factor);
    const double initial = ms(policy_.initial).count();
    const double cap = std::max(initial, ms(policy_.max).count());
    // Capped before growing further, so a long run of failures cannot overflow.
    const double exponent = std::min<double>(attempts > 0 ? attempts - 1 : 0, 64);
    double d = std::min(cap, initial * std::pow(factor, exponent));
    const double jitter = std::clamp(policy_.jitter, 0.0, 1.0);
    if (jitter > 0 && d > 0) {
        std::uniform_real_distribution<double> spread(-jitter, jitter);
        d *= 1.0 + spread(rng_);
    }
    return std::chrono::duration_cast<outbox_clock::duration>(ms(std::max(0.0, d)));
}

} // namespace hl7::detail
