// Standard HL7 v2 segment identifiers (union of versions 2.1 to 2.8.2), sorted.
// Source: segment definitions of hl7-dictionary 1.0.1 (npm, v2.1-v2.7.1) and hl7apy (crs4/hl7apy ANYHL7SEGMENT lists, v2.7-v2.8.2), cross-checked against HAPI HL7v2 generated segment classes (v2.1-v2.8.1).
// Paths naming any other id that is not a Z-segment are rejected as bad paths.
#pragma once

#include <array>
#include <string_view>

namespace hl7::detail {

inline constexpr std::array<std::string_view, 191> standard_segment_ids{
    "ABS", "ACC", "ADD", "ADJ", "AFF", "AIG", "AIL", "AIP", "AIS", "AL1", "APR", "ARQ",
    "ARV", "AUT", "BHS", "BLC", "BLG", "BPO", "BPX", "BTS", "BTX", "BUI", "CDM", "CDO",
    "CER", "CM0", "CM1", "CM2", "CNS", "CON", "CSP", "CSR", "CSS", "CTD", "CTI", "DB1",
    "DG1", "DMI", "DON", "DPS", "DRG", "DSC", "DSP", "ECD", "ECR", "EDU", "EQL", "EQP",
    "EQU", "ERQ", "ERR", "EVN", "FAC", "FHS", "FT1", "FTS", "GOL", "GP1", "GP2", "GT1",
    "IAM", "IAR", "IIM", "ILT", "IN1", "IN2", "IN3", "INV", "IPC", "IPR", "ISD", "ITM",
    "IVC", "IVT", "LAN", "LCC", "LCH", "LDP", "LOC", "LRL", "MCP", "MFA", "MFE", "MFI",
    "MRG", "MSA", "MSH", "NCK", "NDS", "NK1", "NPU", "NSC", "NST", "NTE", "OBR", "OBX",
    "ODS", "ODT", "OM1", "OM2", "OM3", "OM4", "OM5", "OM6", "OM7", "OMC", "ORC", "ORG",
    "ORO", "OVR", "PAC", "PCE", "PCR", "PD1", "PDA", "PDC", "PEO", "PES", "PID", "PKG",
    "PM1", "PMT", "PR1", "PRA", "PRB", "PRC", "PRD", "PRT", "PSG", "PSH", "PSL", "PSS",
    "PTH", "PV1", "PV2", "PYE", "QAK", "QCK", "QID", "QPD", "QRD", "QRF", "QRI", "RCP",
    "RDF", "RDT", "REL", "RF1", "RFI", "RGS", "RMI", "ROL", "RQ1", "RQD", "RX1", "RXA",
    "RXC", "RXD", "RXE", "RXG", "RXO", "RXR", "RXV", "SAC", "SCD", "SCH", "SCP", "SDD",
    "SFT", "SGH", "SGT", "SHP", "SID", "SLT", "SPM", "SPR", "STF", "STZ", "TCC", "TCD",
    "TQ1", "TQ2", "TXA", "UAC", "UB1", "UB2", "URD", "URS", "VAR", "VND", "VTQ",
};

} // namespace hl7::detail
