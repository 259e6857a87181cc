// Parses arbitrary bytes as a message, looks paths up, edits and re-parses it, and builds its
// ACK. Invariants: no crash; every present value lies inside the message; a value written with
// set() reads back decoded as written; serialised bytes parse to the same serialisation; an
// ACK's MSA-2 is the message's MSH-10.
#include <hl7/model/ack.hpp>
#include <hl7/model/message.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view bytes(reinterpret_cast<const char*>(data), size);
    auto parsed = hl7::message::parse(bytes);
    if (!parsed)
        return 0;
    const hl7::message& m = parsed.value();
    const std::string_view all = m.str();
    static const char* const paths[] = {"MSH.1", "MSH.2", "MSH.3", "MSH.9.2", "MSH.10", "PID", "PID.3",
                                        "PID.3[2].1", "PID.5.1.1", "OBX[2].5", "OBX[3].5[2].1", "ZZZ.1.2.3"};
    for (const char* p : paths) {
        auto v = m.get(p);
        if (v && v.value().present()) {
            const std::string_view raw = v.value().raw();
            if (raw.data() < all.data() || raw.data() + raw.size() > all.data() + all.size())
                __builtin_trap();
            (void)v.value().decoded();
        }
        (void)m.count(p);
    }
    if (auto ack = hl7::make_ack(m, hl7::verdict::error, {.text = bytes.substr(0, 24)})) {
        const std::string_view sent = m.control_id();
        if (!(ack.value().get("MSA.2") == sent) && !(sent.empty() && !ack.value().get("MSA.2").value().present()))
            __builtin_trap();
        // What the library builds, it reads back: the code, and the control id it answers.
        auto read = hl7::ack::read(ack.value());
        if (!sent.empty() && (!read || read.value().control_id() != sent ||
                              read.value().verdict() != hl7::verdict::error))
            __builtin_trap();
    }
    hl7::message edited = m;
    const std::string text(bytes.substr(0, 16));
    if (edited.set("PID.3[2].4.1", text)) {
        if (edited.get("PID.3[2].4.1").value().decoded() != text)
            __builtin_trap();
    }
    auto again = hl7::message::parse(edited.str());
    if (!again || again.value().str() != edited.str())
        __builtin_trap();
    return 0;
}
