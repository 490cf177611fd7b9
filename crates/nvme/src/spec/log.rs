//! Log pages: SMART / Health Information, Error Information, Firmware
//! Slot Information.

use std::ops::Range;

byte_view!(
    /// SMART / Health Information log page (figure 207), 512 bytes.
    HealthLog,
    512
);

/// Byte ranges of [`HealthLog`] fields (figure 207).
pub mod health_field {
    use std::ops::Range;
    /// Critical Warning.
    pub const CRITICAL_WARNING: Range<usize> = 0..1;
    /// Composite Temperature (kelvin).
    pub const TEMPERATURE: Range<usize> = 1..3;
    /// Available Spare (%).
    pub const AVAILABLE_SPARE: Range<usize> = 3..4;
    /// Available Spare Threshold (%).
    pub const AVAILABLE_SPARE_THRESHOLD: Range<usize> = 4..5;
    /// Percentage Used.
    pub const PERCENTAGE_USED: Range<usize> = 5..6;
    /// Data Units Read (1000 x 512 bytes).
    pub const DATA_UNITS_READ: Range<usize> = 32..48;
    /// Data Units Written.
    pub const DATA_UNITS_WRITTEN: Range<usize> = 48..64;
    /// Host Read Commands.
    pub const HOST_READ_COMMANDS: Range<usize> = 64..80;
    /// Host Write Commands.
    pub const HOST_WRITE_COMMANDS: Range<usize> = 80..96;
    /// Controller Busy Time (minutes).
    pub const CONTROLLER_BUSY_TIME: Range<usize> = 96..112;
    /// Power Cycles.
    pub const POWER_CYCLES: Range<usize> = 112..128;
    /// Power On Hours.
    pub const POWER_ON_HOURS: Range<usize> = 128..144;
    /// Unsafe Shutdowns.
    pub const UNSAFE_SHUTDOWNS: Range<usize> = 144..160;
    /// Media and Data Integrity Errors.
    pub const MEDIA_ERRORS: Range<usize> = 160..176;
    /// Number of Error Information Log Entries.
    pub const NUM_ERROR_LOG_ENTRIES: Range<usize> = 176..192;
    /// Warning Composite Temperature Time (minutes).
    pub const WARNING_TEMP_TIME: Range<usize> = 192..196;
    /// Critical Composite Temperature Time (minutes).
    pub const CRITICAL_TEMP_TIME: Range<usize> = 196..200;
    /// Temperature Sensors 1..8 (kelvin, 0: not implemented), 2 bytes each.
    pub const TEMP_SENSORS: Range<usize> = 200..216;
}

impl HealthLog {
    /// Critical warning bits.
    pub fn critical_warning(&self) -> u8 {
        self.bytes[0]
    }
    /// Composite temperature in kelvin.
    pub fn temperature(&self) -> u16 {
        self.le(health_field::TEMPERATURE) as u16
    }
    /// Available spare, percent.
    pub fn available_spare(&self) -> u8 {
        self.bytes[health_field::AVAILABLE_SPARE.start]
    }
    /// Available spare threshold, percent.
    pub fn available_spare_threshold(&self) -> u8 {
        self.bytes[health_field::AVAILABLE_SPARE_THRESHOLD.start]
    }
    /// Percentage used.
    pub fn percentage_used(&self) -> u8 {
        self.bytes[health_field::PERCENTAGE_USED.start]
    }
    /// A 128-bit counter field.
    pub fn counter(&self, r: Range<usize>) -> u128 {
        self.le128(r)
    }
    /// Data units read.
    pub fn data_units_read(&self) -> u128 {
        self.le128(health_field::DATA_UNITS_READ)
    }
    /// Data units written.
    pub fn data_units_written(&self) -> u128 {
        self.le128(health_field::DATA_UNITS_WRITTEN)
    }
    /// Host read commands.
    pub fn host_read_commands(&self) -> u128 {
        self.le128(health_field::HOST_READ_COMMANDS)
    }
    /// Host write commands.
    pub fn host_write_commands(&self) -> u128 {
        self.le128(health_field::HOST_WRITE_COMMANDS)
    }
    /// Power cycles.
    pub fn power_cycles(&self) -> u128 {
        self.le128(health_field::POWER_CYCLES)
    }
    /// Power-on hours.
    pub fn power_on_hours(&self) -> u128 {
        self.le128(health_field::POWER_ON_HOURS)
    }
    /// Unsafe shutdowns.
    pub fn unsafe_shutdowns(&self) -> u128 {
        self.le128(health_field::UNSAFE_SHUTDOWNS)
    }
    /// Media errors.
    pub fn media_errors(&self) -> u128 {
        self.le128(health_field::MEDIA_ERRORS)
    }
    /// Error log entries.
    pub fn num_error_log_entries(&self) -> u128 {
        self.le128(health_field::NUM_ERROR_LOG_ENTRIES)
    }
    /// Minutes above the warning composite temperature threshold.
    pub fn warning_temp_time(&self) -> u32 {
        self.le(health_field::WARNING_TEMP_TIME) as u32
    }
    /// Minutes above the critical composite temperature threshold.
    pub fn critical_temp_time(&self) -> u32 {
        self.le(health_field::CRITICAL_TEMP_TIME) as u32
    }
    /// Temperature sensor `i` (0..8) in kelvin; 0 when not implemented.
    pub fn temp_sensor(&self, i: usize) -> u16 {
        let at = health_field::TEMP_SENSORS.start + 2 * i.min(7);
        self.le(at..at + 2) as u16
    }
    /// Sets the composite temperature.
    pub fn set_temperature(&mut self, k: u16) {
        self.set_le(health_field::TEMPERATURE, k as u64)
    }
}

byte_view!(
    /// Error Information log entry (figure 205), 64 bytes.
    ErrorLogEntry,
    64
);

/// Byte ranges of [`ErrorLogEntry`] fields (figure 205).
pub mod error_field {
    use std::ops::Range;
    /// Error Count.
    pub const ERROR_COUNT: Range<usize> = 0..8;
    /// Submission Queue ID.
    pub const SQID: Range<usize> = 8..10;
    /// Command ID.
    pub const CID: Range<usize> = 10..12;
    /// Status Field (bit 0 phase, 15:1 status).
    pub const STATUS: Range<usize> = 12..14;
    /// LBA.
    pub const LBA: Range<usize> = 16..24;
    /// Namespace.
    pub const NSID: Range<usize> = 24..28;
}

impl ErrorLogEntry {
    /// Error count (0: empty entry).
    pub fn error_count(&self) -> u64 {
        self.le(error_field::ERROR_COUNT)
    }
    /// Submission queue id.
    pub fn sqid(&self) -> u16 {
        self.le(error_field::SQID) as u16
    }
    /// Command id.
    pub fn cid(&self) -> u16 {
        self.le(error_field::CID) as u16
    }
    /// The status.
    pub fn status(&self) -> crate::status::Status {
        crate::status::Status::from_raw((self.le(error_field::STATUS) >> 1) as u16)
    }
    /// LBA.
    pub fn lba(&self) -> u64 {
        self.le(error_field::LBA)
    }
    /// Namespace.
    pub fn nsid(&self) -> u32 {
        self.le(error_field::NSID) as u32
    }
}

byte_view!(
    /// Firmware Slot Information log page (figure 208), 512 bytes.
    FirmwareSlotLog,
    512
);

impl FirmwareSlotLog {
    /// Active Firmware Info: the active slot (bits 2:0).
    pub fn active_slot(&self) -> u8 {
        self.bytes[0] & 0b111
    }
    /// The revision in slot `n` (1..=7), empty if none.
    pub fn revision(&self, n: usize) -> String {
        self.text(Self::revision_range(n))
    }
    /// The bytes of the revision in slot `n` (1..=7).
    pub fn revision_range(n: usize) -> Range<usize> {
        let o = 8 * n.clamp(1, 7);
        o..o + 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_log_fields() {
        let mut h = HealthLog::default();
        h.set_temperature(323);
        h.bytes[health_field::HOST_READ_COMMANDS.start] = 0x10;
        h.bytes[health_field::HOST_READ_COMMANDS.start + 15] = 0x01;
        assert_eq!(h.temperature(), 323);
        assert_eq!(h.host_read_commands(), (1u128 << 120) | 0x10);
    }
}
