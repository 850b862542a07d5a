namespace Vism.Core;

/// <summary>
/// How much of its loop and of the host one device may take, so that a hostile or broken driver
/// cannot starve the other devices on its loop (<c>[[device]]</c> keys <c>requests-per-turn</c>,
/// <c>descriptors-per-turn</c>, <c>max-in-flight</c>). The regions a device references are limited
/// by its <c>max-regions</c> slots.
/// </summary>
public sealed record DeviceLimits
{
    /// <summary>The defaults.</summary>
    public static DeviceLimits Default { get; } = new();

    /// <summary>Range of <see cref="RequestsPerTurn"/>.</summary>
    public const int MinRequestsPerTurn = 1, MaxRequestsPerTurn = 65536;

    /// <summary>Range of <see cref="DescriptorsPerTurn"/>.</summary>
    public const int MinDescriptorsPerTurn = 1, MaxDescriptorsPerTurn = 1 << 24;

    /// <summary>Range of <see cref="MaxInFlight"/>.</summary>
    public const int MinMaxInFlight = 2, MaxMaxInFlight = 65536;

    /// <summary>Control requests served in one loop turn before the device yields the loop to the
    /// other devices (default 16).</summary>
    public int RequestsPerTurn { get; init; } = 16;

    /// <summary>Descriptors walked in one loop turn before the device yields the loop (default
    /// 1024: four of the longest chains; a control request takes two or three, so 16 requests never
    /// reach it). One chain is always walked whole, but it holds at most the queue size (at most
    /// 256) of buffer descriptors: a longer one, such as a 32,768-entry indirect table, is a ring
    /// fault found from the table's length without walking it (<c>ring.chain-over-queue-size</c>).</summary>
    public int DescriptorsPerTurn { get; init; } = 1024;

    /// <summary>Chains the device holds popped and not yet completed, over all its queues (default
    /// 512: every entry of a 256-entry controlq and event queue). Past it the device stops taking
    /// buffers until it completes some.</summary>
    public int MaxInFlight { get; init; } = 512;

    /// <summary>Why these limits cannot be used, or null.</summary>
    public string? Validate()
    {
        if (RequestsPerTurn is < MinRequestsPerTurn or > MaxRequestsPerTurn)
            return $"requests-per-turn {RequestsPerTurn} is outside {MinRequestsPerTurn}..{MaxRequestsPerTurn}";
        if (DescriptorsPerTurn is < MinDescriptorsPerTurn or > MaxDescriptorsPerTurn)
            return $"descriptors-per-turn {DescriptorsPerTurn} is outside {MinDescriptorsPerTurn}..{MaxDescriptorsPerTurn}";
        if (MaxInFlight is < MinMaxInFlight or > MaxMaxInFlight)
            return $"max-in-flight {MaxInFlight} is outside {MinMaxInFlight}..{MaxMaxInFlight}";
        return null;
    }
}
