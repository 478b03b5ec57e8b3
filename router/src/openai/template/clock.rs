//! A small C `strftime` for `strftime_now`: UTC only, the directives chat templates use
//! (dates in system prompts). Unknown directives are written out unchanged.

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    /// 0 = Monday
    weekday: usize,
    /// 1..=366
    day_of_year: u32,
    hour: u64,
    minute: u64,
    second: u64,
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days` algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn civil_time(unix_s: u64) -> CivilTime {
    let days = (unix_s / 86_400) as i64;
    let seconds_of_day = unix_s % 86_400;
    let (year, month, day) = civil_from_days(days);
    const DAYS_BEFORE_MONTH: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let leap_day = u32::from(month > 2 && is_leap(year));
    CivilTime {
        year,
        month,
        day,
        // 1970-01-01 was a Thursday (index 3).
        weekday: ((days + 3).rem_euclid(7)) as usize,
        day_of_year: DAYS_BEFORE_MONTH[month as usize - 1] + day + leap_day,
        hour: seconds_of_day / 3600,
        minute: seconds_of_day / 60 % 60,
        second: seconds_of_day % 60,
    }
}

/// Formats `unix_s` (UTC) with `format`'s `%` directives; `%-d`-style (no padding) is
/// accepted for the numeric ones, as glibc does.
pub fn format_utc(format: &str, unix_s: u64) -> String {
    let time = civil_time(unix_s);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let number = |value: u64, width: usize| {
            if unpadded {
                value.to_string()
            } else {
                format!("{value:0width$}")
            }
        };
        match chars.next() {
            Some('Y') => out.push_str(&time.year.to_string()),
            Some('y') => out.push_str(&number(time.year.rem_euclid(100) as u64, 2)),
            Some('m') => out.push_str(&number(u64::from(time.month), 2)),
            Some('d') => out.push_str(&number(u64::from(time.day), 2)),
            Some('e') => out.push_str(&format!("{:>2}", time.day)),
            Some('j') => out.push_str(&number(u64::from(time.day_of_year), 3)),
            Some('H') => out.push_str(&number(time.hour, 2)),
            Some('I') => out.push_str(&number((time.hour + 11) % 12 + 1, 2)),
            Some('M') => out.push_str(&number(time.minute, 2)),
            Some('S') => out.push_str(&number(time.second, 2)),
            Some('p') => out.push_str(if time.hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[time.month as usize - 1]),
            Some('b') | Some('h') => out.push_str(&MONTHS[time.month as usize - 1][..3]),
            Some('A') => out.push_str(WEEKDAYS[time.weekday]),
            Some('a') => out.push_str(&WEEKDAYS[time.weekday][..3]),
            Some('F') => out.push_str(&format!("{}-{:02}-{:02}", time.year, time.month, time.day)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday (leap day).
        let leap_day_s = 1_709_211_909;
        assert_eq!(
            format_utc("%Y-%m-%d %H:%M:%S", leap_day_s),
            "2024-02-29 13:05:09"
        );
        assert_eq!(format_utc("%d %b %Y", leap_day_s), "29 Feb 2024");
        assert_eq!(
            format_utc("%A, %B %-d, %y %I%p", leap_day_s),
            "Thursday, February 29, 24 01PM"
        );
        assert_eq!(
            format_utc("%j %a %F %%", leap_day_s),
            "060 Thu 2024-02-29 %"
        );
        assert_eq!(format_utc("%d %b %Y", 0), "01 Jan 1970");
        // 2000-12-31: the last day of a leap year divisible by 400.
        assert_eq!(format_utc("%j %e %Q", 978_220_800), "366 31 %Q");
    }
}
