#include "dedup.hpp"

namespace hl7::tool {

std::optional<std::string> dedup_window::key_of(const message& m)
{
    const std::string_view id = m.control_id();
    if (id.empty())
        return std::nullopt;
    auto raw = [&](const char* path) {
        auto v = m.get(path);
        return v ? v.value().raw() : std::string_view{};
    };
    // Unit separators cannot occur in the fields of a message that parsed with usual
    // delimiters; even if they did, a clash only merges two senders' windows.
    std::string key(raw("MSH.3"));
    key += '\x1f';
    key += raw("MSH.4");
    key += '\x1f';
    key += id;
    return key;
}

dedup_window::found dedup_window::claim(const std::string& key)
{
    std::lock_guard lock(mutex_);
    auto [it, fresh] = entries_.try_emplace(key);
    if (fresh)
        return {found::state::fresh, std::nullopt};
    if (!it->second.answered)
        return {found::state::in_progress, std::nullopt};
    return {found::state::answered, it->second.reply};
}

void dedup_window::finish(const std::string& key, std::optional<message> reply)
{
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(key);
    if (it == entries_.end() || it->second.answered)
        return;
    it->second.answered = true;
    it->second.reply = std::move(reply);
    it->second.age = order_.insert(order_.end(), key);
    while (order_.size() > capacity_) {
        entries_.erase(order_.front());
        order_.pop_front();
    }
}

void dedup_window::abandon(const std::string& key)
{
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(key);
    if (it != entries_.end() && !it->second.answered)
        entries_.erase(it);
}

std::size_t dedup_window::size() const
{
    std::lock_guard lock(mutex_);
    return order_.size();
}

} // namespace hl7::tool
