using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace Vism.Memory.Shared;

/// <summary>
/// File names of one device's regions: <c>&lt;prefix&gt;&lt;device&gt;-&lt;token, 16 hex digits&gt;.region</c>
/// for a committed region and <c>.&lt;prefix&gt;&lt;device&gt;-&lt;random&gt;.tmp</c> while one is being
/// claimed. The device name is escaped (bytes outside <c>[A-Za-z0-9._-]</c> become <c>%XX</c>),
/// so names from two devices never collide and never leave the directory.
/// </summary>
internal sealed class RegionNames
{
    public const string RegionSuffix = ".region";
    public const string TempSuffix = ".tmp";
    private const int TokenDigits = 16;

    /// <summary>Longest file name Linux file systems accept (NAME_MAX).</summary>
    public const int NameMax = 255;

    public RegionNames(string prefix, string deviceName)
    {
        Stem = prefix + Escape(deviceName) + "-";
    }

    /// <summary>What every file of this device starts with (after the dot of a temporary one).</summary>
    public string Stem { get; }

    /// <summary>Length of the longest name this device uses.</summary>
    public int LongestName => 1 + Stem.Length + TokenDigits + Math.Max(RegionSuffix.Length, TempSuffix.Length);

    public string Region(ulong token) => Stem + token.ToString("x16", CultureInfo.InvariantCulture) + RegionSuffix;

    public string Temporary() =>
        "." + Stem + BitConverter.ToUInt64(RandomNumberGenerator.GetBytes(8)).ToString("x16", CultureInfo.InvariantCulture) + TempSuffix;

    /// <summary>Whether <paramref name="fileName"/> names a committed region of this device, and its token.</summary>
    public bool TryParseRegion(string fileName, out ulong token)
    {
        token = 0;
        if (fileName.Length != Stem.Length + TokenDigits + RegionSuffix.Length
            || !fileName.StartsWith(Stem, StringComparison.Ordinal)
            || !fileName.EndsWith(RegionSuffix, StringComparison.Ordinal))
            return false;
        ReadOnlySpan<char> hex = fileName.AsSpan(Stem.Length, TokenDigits);
        foreach (char c in hex)
            if (!char.IsAsciiHexDigitLower(c) && !char.IsAsciiDigit(c)) return false;
        return ulong.TryParse(hex, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out token) && token != 0;
    }

    /// <summary>Whether <paramref name="fileName"/> is a temporary file of this device (left by a crash mid-allocation).</summary>
    public bool IsTemporary(string fileName) =>
        fileName.Length == 1 + Stem.Length + TokenDigits + TempSuffix.Length
        && fileName[0] == '.'
        && fileName.AsSpan(1).StartsWith(Stem, StringComparison.Ordinal)
        && fileName.EndsWith(TempSuffix, StringComparison.Ordinal);

    private static string Escape(string name)
    {
        var sb = new StringBuilder(name.Length);
        foreach (byte b in Encoding.UTF8.GetBytes(name))
        {
            char c = (char)b;
            if (char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-') sb.Append(c);
            else sb.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }
}
