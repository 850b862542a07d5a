using System.Globalization;

using Vism.Abstractions;

namespace Vism.Host.Config;

/// <summary>Byte sizes as written in config files: an integer number of bytes, or a string such as
/// <c>"4096"</c>, <c>"1MiB"</c>, <c>"2 GiB"</c>, <c>"64K"</c> (binary units only).</summary>
public static class Sizes
{
    private static readonly (string Suffix, int Shift)[] Units =
    [
        ("kib", 10), ("mib", 20), ("gib", 30), ("tib", 40),
        ("k", 10), ("m", 20), ("g", 30), ("t", 40),
        ("b", 0),
    ];

    /// <summary>Parses a size string.</summary>
    /// <param name="text">The text.</param>
    /// <param name="bytes">The size in bytes.</param>
    /// <param name="error">Why it is not a size.</param>
    public static bool TryParse(string text, out ulong bytes, out string? error)
    {
        bytes = 0;
        error = null;
        string s = text.Trim();
        int shift = 0;
        string lower = s.ToLowerInvariant();
        if (lower.EndsWith("kb") || lower.EndsWith("mb") || lower.EndsWith("gb") || lower.EndsWith("tb"))
        {
            error = $"'{text}' is ambiguous: write binary units (KiB, MiB, GiB, TiB) or a number of bytes";
            return false;
        }
        foreach ((string suffix, int sh) in Units)
        {
            if (lower.EndsWith(suffix, StringComparison.Ordinal))
            {
                s = s[..^suffix.Length].TrimEnd();
                shift = sh;
                break;
            }
        }
        s = s.Replace("_", "");
        if (s.Length == 0 || !ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out ulong n))
        {
            error = $"'{text}' is not a size: write a whole number of bytes or a number with KiB, MiB, GiB or TiB (e.g. \"2MiB\")";
            return false;
        }
        if (shift > 0 && n > ulong.MaxValue >> shift)
        {
            error = $"'{text}' is too large";
            return false;
        }
        bytes = n << shift;
        return true;
    }

    /// <summary>Formats a size the way a config file would write it: the largest exact binary unit.</summary>
    public static string Format(ulong bytes) => ByteSizes.Format(bytes);
}
