using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;

namespace Vism.Host.Composition;

/// <summary>The host's console logging: one line per message, with time and category.</summary>
internal static class Logging
{
    public static ILoggerFactory Create(LogLevel level) => LoggerFactory.Create(b => b
        .SetMinimumLevel(level)
        .AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
            o.UseUtcTimestamp = false;
            o.ColorBehavior = LoggerColorBehavior.Default;
        })
        .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace));
}
