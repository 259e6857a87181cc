#include <hl7/outbox/error.hpp>

#include <string>

namespace hl7 {
namespace {

class outbox_category final : public boost::system::error_category {
public:
    const char* name() const noexcept override { return "hl7.outbox"; }

    std::string message(int ev) const override
    {
        switch (static_cast<outbox_errc>(ev)) {
        case outbox_errc::control_id_conflict:
            return "the outbox already holds a different message with this MSH-10 for this destination";
        case outbox_errc::delivery_locked: return "another process is delivering from this outbox";
        case outbox_errc::lease_lost: return "the lane's lease was taken over by another instance, or expired";
        case outbox_errc::already_running: return "this outbox is already delivering to the destination";
        case outbox_errc::not_found: return "no such message in the outbox";
        case outbox_errc::invalid_lanes: return "invalid number of lanes: not in 1-1024";
        case outbox_errc::unsupported_location: return "this build of the outbox has no PostgreSQL support";
        case outbox_errc::cannot_open: return "the outbox file cannot be opened or created";
        case outbox_errc::read_only: return "the outbox file or its directory is read-only";
        case outbox_errc::store_full: return "disk full (or file size limit reached): the change was not stored";
        case outbox_errc::store_busy: return "another process held the outbox's write lock too long";
        case outbox_errc::corrupt_store: return "the outbox file is damaged or is not a database";
        case outbox_errc::incompatible_store:
            return "the file is not an outbox, or was written by a newer version of the outbox";
        case outbox_errc::store_io_error: return "I/O error reading or writing the outbox file";
        case outbox_errc::store_failed: return "the outbox database failed";
        case outbox_errc::closed: return "the outbox is closed";
        case outbox_errc::lease_held: return "another instance holds the lane's lease";
        case outbox_errc::store_unavailable: return "the PostgreSQL server cannot be reached or the connection was lost";
        }
        return "unknown hl7.outbox error " + std::to_string(ev);
    }
};

} // namespace

const boost::system::error_category& outbox_error_category() noexcept
{
    static const outbox_category category;
    return category;
}

} // namespace hl7
