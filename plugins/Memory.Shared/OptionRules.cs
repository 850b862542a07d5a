using Vism.Abstractions;

namespace Vism.Memory.Shared;

/// <summary>Validation rules both memory plugins apply, with messages that name the key and say
/// what would be right.</summary>
internal static class OptionRules
{
    public static void RegionSize(OptionsValidationContext context, ulong pageSize, string pageKind)
    {
        ulong region = context.Device.RegionSize;
        if (region == 0 || region % pageSize != 0)
        {
            ulong suggestion = Math.Max(pageSize, (region + pageSize - 1) / pageSize * pageSize);
            context.DeviceError("region-size",
                $"{Sizes.Prose(region)} is not a multiple of the {pageKind} page size {Sizes.Prose(pageSize)}; use a multiple such as {Sizes.Prose(suggestion)}");
        }
    }

    public static void Capacity(OptionsValidationContext context, ulong capacity, ulong pageSize)
    {
        if (capacity == 0) return; // the REGIONS window size
        if (capacity % pageSize != 0)
            context.Error("capacity", $"{Sizes.Prose(capacity)} is not a multiple of the page size {Sizes.Prose(pageSize)}");
        else if (capacity < context.Device.RegionSize)
            context.Error("capacity", $"{Sizes.Prose(capacity)} is smaller than one region ({Sizes.Prose(context.Device.RegionSize)}); use 0 for the REGIONS window size or at least region-size");
    }

    public static void Prefix(OptionsValidationContext context, string? prefix)
    {
        if (prefix is null)
        {
            context.Error("prefix", "must be a string (it may be empty)");
            return;
        }
        if (prefix.Contains('/') || prefix.Contains('\0'))
            context.Error("prefix", $"'{prefix}' must not contain '/' or NUL: it is part of a file name");
        else if (new RegionNames(prefix, context.Device.Name).LongestName > RegionNames.NameMax)
            context.Error("prefix", $"'{prefix}' with the device name '{context.Device.Name}' makes file names longer than {RegionNames.NameMax} bytes; shorten it");
    }

    /// <summary>The capacity to use: the configured one, or the REGIONS window size for 0.</summary>
    public static ulong EffectiveCapacity(ulong configured, DeviceDescription device) =>
        configured != 0 ? configured : device.RegionsWindowSize;

    /// <summary>Runs <paramref name="options"/>' validation and throws if it reported anything, so a
    /// backend created without the host (tests, embedding) never runs on options the host would refuse.</summary>
    public static void ThrowIfInvalid(IValidatableOptions options, string kind, DeviceDescription device, HostDescription host)
    {
        var context = new CollectingContext(device, host);
        options.Validate(context);
        if (context.Errors.Count > 0)
            throw new ArgumentException($"invalid [device.memory] options (kind = \"{kind}\") of device '{device.Name}': {string.Join("; ", context.Errors)}", nameof(options));
    }

    private sealed class CollectingContext(DeviceDescription device, HostDescription host) : OptionsValidationContext
    {
        public List<string> Errors { get; } = [];

        public override DeviceDescription Device => device;

        public override HostDescription Host => host;

        public override void Error(string key, string message) => Errors.Add($"{key}: {message}");

        public override void DeviceError(string key, string message) => Errors.Add($"device {key}: {message}");

        public override void ClaimEndpoint(string key, string endpoint) { }
    }
}
