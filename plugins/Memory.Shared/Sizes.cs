using Vism.Abstractions;

namespace Vism.Memory.Shared;

/// <summary>Human-readable sizes for messages ("2 MiB", "1 GiB", "12288 bytes"). The host's
/// <c>Vism.Host.Config.Sizes.Format</c> writes the config form instead ("2MiB", "12288"); both are
/// <see cref="ByteSizes.Format"/>.</summary>
internal static class Sizes
{
    public const ulong KiB = 1UL << 10;
    public const ulong MiB = 1UL << 20;
    public const ulong GiB = 1UL << 30;

    /// <summary>The message form of <paramref name="bytes"/>.</summary>
    public static string Prose(ulong bytes) => ByteSizes.Format(bytes, prose: true);
}
